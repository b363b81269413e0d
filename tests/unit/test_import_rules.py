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
