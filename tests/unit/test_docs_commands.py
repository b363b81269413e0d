"""Every command in the code blocks of README.md and docs/*.md runs, so a command the code refuses fails CI.

Each `nanogpt-ray` line runs through the CLI as written, with tiny overrides appended where the real thing
would take minutes, or with `--dry_run=True` where it would start a Ray cluster, download weights or serve
forever (the dry run makes the same checks and prints the plan). `python benchmarks/...` lines run with `--smoke`
appended. Lines that are not ours to run (installers, the demo and test scripts that other tests run) are listed
in NOT_OURS with the check that stands for them; a new kind of line fails until it is given one or the other.

They run in a workspace holding what the docs assume exists: the repo's configs, a prepared tiny Shakespeare,
the checkpoint `train configs/train_shakespeare_char_cpu.py` would leave (a 2-iteration run), the prompt files
the lines name, and for the s3:// lines a real S3 API server (moto) with `my-bucket` holding the dataset and a
run's checkpoint, as the `aws s3 cp` and `train` lines before them would leave it.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from nanogpt_ray.cli import main
from nanogpt_ray.config import TrainConfig, UserError, load_config, split_args
from nanogpt_ray.launch_mode import choose_launch_mode
from nanogpt_ray.plan import DONE
from tests.conftest import REPO_ROOT

DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
CKPT_DIR = "out-shakespeare-char-cpu"  # what the CPU config's run leaves; the docs' sample/serve/export lines read it
BUCKET = "my-bucket"
# placeholders in the docs -> what stands for them in the workspace
PLACEHOLDERS = {"path/to/input.txt": "input.txt"}
TINY_TRAIN = ["--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--log_interval=1"]


def _check_file_has(path: str, *needles: str):
    def check():
        text = (REPO_ROOT / path).read_text()
        missing = [n for n in needles if n not in text]
        assert not missing, f"{path} no longer holds {missing}"
    return check


def _check_extras():
    import tomllib

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"dev", "hf", "wandb", "plots"} <= set(extras), f"the README names extras pyproject lacks: {sorted(extras)}"


NOT_OURS = {
    # first word(s) of the line: (why it is not run here, the check that stands for it)
    "bash jobs/demo.sh": ("the demo: tests/integration/test_demo.py runs it",
                          _check_file_has("tests/integration/test_demo.py", "jobs/demo.sh")),
    "bash tests/run.sh": ("the suite itself: CI runs it through .ci/run", _check_file_has(".ci/run", "bash tests/run.sh")),
    "pip install torch": ("downloads; jobs/setup.sh installs torch the same way",
                          _check_file_has("jobs/setup.sh", "pip install", "torch")),
    "pip install -e": ("installs this package; jobs/setup.sh does", _check_extras),
    "source .venv/bin/activate": ("shell setup; jobs/setup.sh makes .venv", _check_file_has("jobs/setup.sh", ".venv")),
    "aws s3 cp": ("the AWS CLI; the workspace uploads the same folder with pyarrow", lambda: None),
}


@dataclasses.dataclass
class DocCommand:
    where: str  # file:line
    argv: list[str]
    env: dict

    @property
    def text(self) -> str:
        return shlex.join(self.argv)


def doc_commands() -> list[DocCommand]:
    """Every command line of every bash code block: continuations joined, comments and VAR=value prefixes split off."""
    commands = []
    for path in DOC_FILES:
        text = path.read_text()
        for block in re.finditer(r"^```(bash|sh|shell|console)\n(.*?)^```", text, re.S | re.M):
            first_line = text[:block.start(2)].count("\n") + 1
            lines = block.group(2).split("\n")
            i = 0
            while i < len(lines):
                start, line = i, lines[i]
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                words = shlex.split(line, comments=True)
                env = {}
                while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                    key, value = words.pop(0).split("=", 1)
                    env[key] = value
                if words:
                    commands.append(DocCommand(f"{path.relative_to(REPO_ROOT)}:{first_line + start}", words, env))
    return commands


COMMANDS = doc_commands()


def not_ours(command: DocCommand) -> str | None:
    return next((key for key in NOT_OURS if command.text.startswith(key)), None)


# ----------------------------------------------------------------------------- the workspace the docs assume

@pytest.fixture(scope="module")
def workspace(tmp_path_factory, s3_my_bucket):
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    shutil.copytree(REPO_ROOT / "data" / "shakespeare_char", root / "data" / "shakespeare_char",
                    ignore=shutil.ignore_patterns("*.bin", "meta.json", "__pycache__"))
    with gzip.open(REPO_ROOT / "data" / "shakespeare_char" / "input.txt.gz", "rb") as f:
        (root / "input.txt").write_bytes(f.read())
    (root / "prompt.txt").write_text("ROMEO:")
    prompts = '{"id": 1, "prompt": "ROMEO:"}\n{"id": 2, "prompt": "JULIET:"}\n'
    (root / "prompts.jsonl").write_text(prompts)
    saved_cwd, saved_threads = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    try:
        assert main(["prepare", "shakespeare_char"]) == 0
        # in this process (local mode), not on the 2 Ray workers the config asks for: the same checkpoint, no cluster
        assert main(["train", "configs/train_shakespeare_char_cpu.py", "--num_workers=1", f"--out_dir={CKPT_DIR}",
                     *TINY_TRAIN]) == 0
        from nanogpt_ray.storage import upload_dir, write_text

        upload_dir(str(root / "data" / "shakespeare_char"), f"s3://{BUCKET}/data/shakespeare_char")
        upload_dir(str(root / CKPT_DIR), f"s3://{BUCKET}/runs/out-shakespeare-char/checkpoint_000000")
        write_text(f"s3://{BUCKET}/p.jsonl", prompts)
        yield root
    finally:
        os.chdir(saved_cwd)
        torch.set_num_threads(saved_threads)  # sampling's thread probe must not outlive this module


@pytest.fixture(scope="module")
def s3_my_bucket():
    from tests.s3_server import s3_server

    with s3_server(bucket=BUCKET) as server:
        yield server


# ----------------------------------------------------------------------------- how each line runs

def cli_argv(command: DocCommand) -> list[str]:
    """The nanogpt-ray arguments to run: as written, plus tiny overrides or --dry_run=True (see the module doc)."""
    args = [PLACEHOLDERS.get(a, a) for a in command.argv[1:]]
    name, rest = args[0], args[1:]
    if name == "train":
        try:
            local = choose_launch_mode(load_config(TrainConfig, *split_args(rest)), {}).local
        except UserError:  # a config the code refuses: the run below says why
            local = False
        return args + (TINY_TRAIN if local else ["--dry_run=True"])
    if name in ("tune", "serve"):
        return args + ["--dry_run=True"]
    if name == "sample":
        if any(a.startswith(("--prompts=", "--init_from=gpt2")) for a in rest):  # Ray actors; a download
            return args + ["--dry_run=True"]
        return args + ["--max_new_tokens=8"]
    if name == "bench":
        return args + ["--warmup_steps=1", "--timed_steps=1", "--batch_size=1"]
    return args  # prepare, export: as written


def test_the_docs_hold_commands_and_every_one_is_run_or_accounted_for():
    assert len(COMMANDS) >= 25, f"only {len(COMMANDS)} commands found in the docs' code blocks: is the parser broken?"
    assert any(c.argv[:2] == ["nanogpt-ray", "train"] for c in COMMANDS)
    unknown = [f"{c.where}: {c.text}" for c in COMMANDS
               if not not_ours(c) and c.argv[0] != "nanogpt-ray" and c.argv[:2] != ["python", c.argv[1]]]
    assert not unknown, f"commands this test does not know how to run (add a runner or a NOT_OURS entry): {unknown}"
    unused = [key for key in NOT_OURS if not any(not_ours(c) == key for c in COMMANDS)]
    assert not unused, f"NOT_OURS lists lines no doc holds any more: {unused}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if not_ours(c)], ids=lambda c: c.where)
def test_a_line_not_run_here_is_checked_another_way(command):
    NOT_OURS[not_ours(command)][1]()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.argv[0] == "nanogpt-ray"], ids=lambda c: c.where)
def test_a_nanogpt_ray_command_in_the_docs_runs(command, workspace, capsys, monkeypatch):
    for key, value in command.env.items():
        monkeypatch.setenv(key, PLACEHOLDERS.get(value, value))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = cli_argv(command)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"{command.where}: `nanogpt-ray {shlex.join(argv)}` exited {code}:\n{err[-2000:]}"
    import ray

    assert not ray.is_initialized(), f"{command.where} started Ray in the test process"
    if "--dry_run=True" in argv:
        assert out.rstrip().endswith(DONE), out
        assert "tokens per iteration" in out or argv[0] != "train", out
    elif argv[0] == "sample":
        assert out.count("---------------") >= 1, out  # nanoGPT's separator after each sample
    elif argv[0] == "export":
        hf_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("--hf_dir="))
        assert (pathlib.Path(hf_dir) / "config.json").is_file()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.argv[0] == "python"], ids=lambda c: c.where)
def test_a_benchmark_command_in_the_docs_runs_in_its_smoke_mode(command, workspace):
    script = REPO_ROOT / command.argv[1]
    assert script.is_file(), f"{command.where}: {command.argv[1]} does not exist"
    env = {**os.environ, **{k: str(workspace / PLACEHOLDERS.get(v, v)) if v in PLACEHOLDERS else v
                            for k, v in command.env.items()}, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, str(script), *command.argv[2:], "--smoke"], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command.where}: exited {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}"
