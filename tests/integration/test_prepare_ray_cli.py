"""`nanogpt-ray prepare --parallel=True` as a user runs it: the CLI starts its own local Ray and writes the bytes a
single process writes; a file that is not UTF-8 ends in exit 2 with the last stderr line naming it (after Ray's
own logs) and nothing written; line-mode txt files cut into byte ranges across the tokenizer actors give the
single-process bytes. Corpora come from the shared tiny Shakespeare; nothing touches the network."""

import os
import pathlib
import subprocess
import sys

import pytest

from nanogpt_ray.cluster.prepare import prepare
from nanogpt_ray.config import PrepareConfig

pytestmark = pytest.mark.ray  # the CLI tests start their own local Ray; the last uses the module's cluster

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OUTPUTS = ("train.bin", "val.bin", "meta.json")


@pytest.fixture(scope="module")
def speeches_dir(tmp_path_factory, shakespeare_path):
    """Tiny Shakespeare's speeches as 24 txt files (a document each) and 2 line-mode files, one over 2 MB."""
    root = tmp_path_factory.mktemp("speeches")
    text = shakespeare_path.read_text(encoding="utf-8")
    speeches = [s for s in text.split("\n\n") if s.strip()]
    per = -(-len(speeches) // 24)
    (root / "txt").mkdir()
    for i in range(24):
        (root / "txt" / f"{i:02d}.txt").write_text("\n\n".join(speeches[i * per:(i + 1) * per]))
    (root / "lines").mkdir()
    (root / "lines" / "a.txt").write_text(text + text.upper())
    (root / "lines" / "b.txt").write_text(text[:200_000])
    return root


def outputs(folder: pathlib.Path) -> dict:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def cli_prepare(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               RAY_ADDRESS="local")  # its own local cluster, never one a `ray start` left on this machine
    env.setdefault("TIKTOKEN_CACHE_DIR", str(REPO_ROOT.parent / "shared" / "data" / "tiktoken_cache"))
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", "prepare", *args, "--progress=False"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=150)


# The two CLI tests start their own Ray and come first, before this module's cluster exists (2 cores).

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


@pytest.mark.timeout(180)
def test_line_mode_byte_ranges_across_actors_match_one_process(ray_start_2_cpus, speeches_dir, tmp_path):
    spec = str(speeches_dir / "lines" / "*.txt")
    keys = dict(dataset="text", input=spec, txt_mode="line", chunk_mb=1, progress=False)  # a.txt: 3 units
    single = prepare(PrepareConfig(data_root=str(tmp_path / "single"), parallel=False, **keys))
    parallel = prepare(PrepareConfig(data_root=str(tmp_path / "ray"), parallel=True, **keys))
    assert parallel == single
    assert single["documents"] > 60_000 and single["val_tokens"] > 10_000
    assert outputs(tmp_path / "ray" / "text") == outputs(tmp_path / "single" / "text")
    assert sorted(os.listdir(tmp_path / "ray" / "text")) == sorted(OUTPUTS)
