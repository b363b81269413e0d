"""`nanogpt-ray prepare --parallel=True` as a user runs it: the CLI starts its own local Ray and writes the bytes a
single process writes; a file that is not UTF-8 ends in exit 2 with the last stderr line naming it (after Ray's
own logs) and nothing written; line-mode txt files cut into byte ranges across the tokenizer actors give the
single-process bytes (that one in-process, on test_prepare_ray.py's cluster). Corpora come from the shared tiny
Shakespeare (speeches_dir, tests/integration/conftest.py); nothing touches the network."""

import os
import pathlib
import subprocess
import sys

import pytest

from nanogpt_ray.cluster.prepare import prepare
from nanogpt_ray.config import PrepareConfig
from tests.integration.test_prepare_ray import outputs

pytestmark = pytest.mark.ray  # each CLI run starts its own local Ray

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

def cli_prepare(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_ADDRESS="local")  # its own local cluster, never one a `ray start` left on this machine
    env.setdefault("TIKTOKEN_CACHE_DIR", str(REPO_ROOT.parent / "shared" / "data" / "tiktoken_cache"))
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", "prepare", *args, "--progress=False"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150)


@pytest.mark.timeout(180)
def test_cli_parallel_starts_its_own_ray_and_matches_one_process(speeches_dir, tmp_path):
    spec = str(speeches_dir / "txt" / "*.txt")
    prepare(PrepareConfig(dataset="text", input=spec, data_root=str(tmp_path / "single"), parallel=False,
                          val_fraction=0.3, progress=False))
    done = cli_prepare("text", f"--input={spec}", "--parallel=True", "--val_fraction=0.3",
                       f"--data_root={tmp_path / 'cli'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert outputs(tmp_path / "cli" / "text") == outputs(tmp_path / "single" / "text")
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"prepared {tmp_path / 'cli' / 'text'}: 24 documents") and "tokens/s" in summary


@pytest.mark.timeout(180)
def test_cli_parallel_non_utf8_exits_2_with_the_file_on_the_last_line(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("good text\n")
    (folder / "b.txt").write_bytes(b"more good text\n\xff\xfe broken\n")
    (folder / "c.txt").write_text("good text again\n")
    done = cli_prepare("text", f"--input={folder / '*.txt'}", "--parallel=True", f"--data_root={tmp_path / 'out'}")
    assert done.returncode == 2, done.stderr[-3000:]
    # Ray's own log lines come first; ours is the last line, with nothing after it
    assert done.stderr.strip().splitlines()[-1] == (
        f"nanogpt-ray prepare: error: {folder / 'b.txt'} is not UTF-8 (byte 15); "
        "pass --errors=replace to substitute U+FFFD"), done.stderr[-3000:]
    out = tmp_path / "out" / "text"
    assert not out.exists() or os.listdir(out) == []
