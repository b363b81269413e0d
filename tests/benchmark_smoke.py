"""What the benchmark smoke tests run: every script in benchmarks/ with --smoke, and the rows its table must print.

A script's --smoke mode runs its real code on tiny shapes in seconds, so an import that moved or an argument that
changed breaks a test instead of the next person who wants a figure. tests/unit/test_benchmarks_smoke.py runs the
scripts that start no Ray; tests/integration/test_benchmarks_smoke_ray.py (marked `ray`) runs the others.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time
from typing import NamedTuple

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


class Smoke(NamedTuple):
    starts_ray: bool
    rows: tuple[str, ...] | None
    """Regexes (one per table row, matched at a line's start) the output must hold; None: not written down yet,
    the run must exit 0 and print something shaped like a table."""
    args: tuple[str, ...] = ()
    """Extra arguments; {tmp} is the test's temporary folder (for scripts that otherwise write inside the repo)."""


SMOKE = {
    "fsdp_memory.py": Smoke(False, (r"\| gpt2: params \+ grads \+ AdamW", r"\| gpt2-medium: params \+ grads \+ AdamW",
                                    r"\| mini 4x4x128 step time")),
    "time_to_loss.py": Smoke(False, (r"\| \(a\) nanoGPT: gpt2 \+ AdamW \| 0\.", r"\| \(b\) modern \+ AdamW \| 0\.",
                                     r"\| \(c\) modern \+ Muon \| 0\.")),
    "gpu_check.py": Smoke(False, (r"\| learns +\| PASS \|", r"\| KV-cache sampling +\| PASS \|")),
    "prepare_speed.py": Smoke(True, (r"\s*0MB\s+single\s", r"\s*0MB\s+ray\s")),
    "ray_background.py": Smoke(True, (r"  everything but the training worker: [\d.]+%", r"bare loop alone: [\d.]+ ms/iter"),
                               ("--work_dir={tmp}/work", "--data_root={tmp}/data")),
    "serve_load.py": Smoke(True, (r"\| one at a time \| 2 \|", r"\| 1 concurrent \| 1 \|", r"\| 2 concurrent \| 2 \|")),
    "sweep_efficiency.py": Smoke(True, (r"grid\s+\d", r"asha\s+\d", r"replay of ASHA on the grid's curves, 2 random"),
                                 ("--work={tmp}",)),
    "train_speed.py": Smoke(False, (r"\| bare loop \(plain process\) \| [\d.]+ \| 1\.00x", r"\| nanogpt-ray train \(local mode\) \| [\d.]+ \|"),
                            ("--work_dir={tmp}/work", "--data_root={tmp}/data")),
    "sample_speed.py": Smoke(False, (r"nanoGPT's way: batch 1, no cache\s+[\d,.]+", r"ours: KV cache, batch 2, shift 8\s+[\d,.]+")),
    "storage.py": Smoke(False, (r"smoke \| local disk \| [\d.]+", r"smoke \| S3 server \| [\d.]+")),
}


def benchmark_scripts() -> list[str]:
    """Every benchmark but report.py, which runs the others (its reading of each one's output is checked on the
    smoke output of each, in run_smoke)."""
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "report.py")


def scripts(starts_ray: bool) -> list[str]:
    """The benchmarks in this repository that do (or do not) start Ray; unlisted ones fail their own test."""
    return [name for name in benchmark_scripts() if name in SMOKE and SMOKE[name].starts_ray == starts_ray]


def _looks_like_a_table(output: str) -> bool:
    """Two or more lines of a markdown table, or of columns set apart by runs of spaces."""
    markdown = [line for line in output.splitlines() if re.match(r"\s*\|.*\|\s*$", line)]
    columns = [line for line in output.splitlines() if len(re.findall(r"\S(?: {2,}|\t)(?=\S)", line)) >= 2]
    return len(markdown) >= 2 or len(columns) >= 2


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def run_smoke(name: str, tmp: pathlib.Path, timeout_s: float) -> float:
    """Run benchmarks/<name> --smoke; fail on a non-zero exit or a missing row. Returns its wall seconds."""
    smoke = SMOKE[name]
    args = [a.format(tmp=tmp) for a in smoke.args]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "offline",
           "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(BENCHMARKS / name), "--smoke", *args], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:  # say how far it got
        raise AssertionError(f"{name} --smoke ran past {timeout_s:.0f} s; its output so far:\n"
                             f"{_text(e.stdout)[-3000:]}\n{_text(e.stderr)[-3000:]}") from None
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{name} --smoke exited {done.returncode}:\n{output[-4000:]}"
    if smoke.rows is None:
        assert _looks_like_a_table(done.stdout), f"{name} --smoke printed no table:\n{done.stdout[-4000:]}"
    for row in smoke.rows or ():
        assert re.search("^" + row, done.stdout, re.MULTILINE), f"{name} --smoke printed no row {row!r}:\n{done.stdout[-4000:]}"
    for headline in report_headlines(name):  # benchmarks/report.py reads its README figure from this output
        assert headline.figure(done.stdout), f"report.py found no figure for {headline.what!r} in {name}'s output"
    return seconds


def report_headlines(name: str) -> list:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import report
    finally:
        sys.path.remove(str(BENCHMARKS))
    return [h for h in report.HEADLINES if h.script == name]
