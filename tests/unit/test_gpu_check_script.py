"""benchmarks/gpu_check.py, run on the CPU with a tiny shape: every row of its table passes and it exits 0, so the
script is ready for the day a GPU machine is lent (where it runs the GPT-2 shape in bf16 with compile)."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_gpu_check_runs_its_checks_on_cpu_and_prints_one_table():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device=cpu", "--tiny", "--iters=10",
                           "--new_tokens=8", "--compile=False"], cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "PASS" in line]
    assert [line.split("|")[1].strip() for line in table] == ["train (fp32)", "fp16 + GradScaler", "torchrun DDP",
                                                              "KV-cache sampling"]
    assert "all_reduce 1.0 (want 1.0)" in proc.stdout and "tok/s" in proc.stdout
