"""DESIGN.md's two hard import rules, checked in a fresh interpreter (this test process has imported everything)."""

import json
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def modules_after_import(module: str) -> set[str]:
    """Top-level names in sys.modules after `import module` in a new Python."""
    code = f"import json, sys, {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_importing_the_model_loads_no_ray():
    loaded = modules_after_import("nanogpt_ray.model")
    assert "torch" in loaded  # the check sees real imports
    assert "ray" not in loaded


def test_importing_the_config_loads_no_torch():
    loaded = modules_after_import("nanogpt_ray.config")
    assert "nanogpt_ray" in loaded
    assert "torch" not in loaded
    assert "ray" not in loaded
    assert "numpy" not in loaded  # stdlib only


def test_importing_the_training_loop_and_engine_loads_no_ray():
    for module in ("nanogpt_ray.train_loop", "nanogpt_ray.engine", "nanogpt_ray.sample", "nanogpt_ray.prepare",
                   "nanogpt_ray.sweep", "nanogpt_ray.bench", "nanogpt_ray.preflight"):
        loaded = modules_after_import(module)
        assert "nanogpt_ray" in loaded
        assert "ray" not in loaded, module


# ---------------------------------------------------------------------------- the package, parsed

PACKAGE = REPO_ROOT / "nanogpt_ray"


def package_imports() -> dict[str, list[tuple[str, int]]]:
    """{module: [(imported name, line)]} for every import in the package, function-level ones included."""
    import ast

    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        base = list(parts[:-1])  # the package a relative import starts from
        imports = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imports += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                imports.append((target, node.lineno))
                imports += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
        found[module] = imports
    return found


def test_only_the_cluster_wing_and_the_cli_import_ray():
    offenders = [f"{module} imports {name} (line {line})" for module, imports in package_imports().items()
                 for name, line in imports
                 if (name == "ray" or name.startswith("ray.")) and ".cluster" not in module and module != "nanogpt_ray.cli"]
    assert offenders == [], "ray outside nanogpt_ray/cluster/ and cli.py: " + "; ".join(offenders)
    assert any(name == "ray" for name, _ in package_imports()["nanogpt_ray.cluster.session"])  # the parse sees imports


def test_nothing_imports_the_cli():
    offenders = [f"{module} imports {name} (line {line})" for module, imports in package_imports().items()
                 for name, line in imports if name == "nanogpt_ray.cli" or name.startswith("nanogpt_ray.cli.")]
    assert offenders == [], "; ".join(offenders)


def test_the_package_has_no_import_cycle():
    imports = package_imports()
    graph = {m: {n for n, _ in deps if n in imports and n != m} for m, deps in imports.items()}
    assert graph["nanogpt_ray.cluster.train"] >= {"nanogpt_ray.train_loop"}  # the graph holds real edges

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [" -> ".join(c) for c in map(cycle_from, sorted(graph)) if c]
    assert cycles == [], "import cycle: " + cycles[0] if cycles else ""
