"""benchmarks/gpu_check.py on the CPU with a tiny shape: the rows whose verdict is numerics (learning, fp16 + GradScaler,
DDP against accumulation) pass and land in one table, a run that cannot learn (--lr=0) fails its learning row and the
script, and a row past its timeout is killed and fails by name. The timed rows (MFU, compile, sampling, serving) judge
speed, which a shared 2-core machine cannot promise a test; the benchmark smoke test runs them.
On a GPU machine the same script runs the GPT-2 124M shape (its docstring has the commands)."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def gpu_check(*flags, timeout=600):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device=cpu", "--tiny", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 4 and cells[1] in ("PASS", "FAIL", "UNCHECKED"):
            rows[cells[0]] = (cells[1], cells[2])
    return proc, rows


@pytest.mark.timeout(900)
def test_the_numerics_rows_run_pass_and_land_in_one_table():
    proc, rows = gpu_check("--compile=False", "--rows=learns,fp16,ddp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert list(rows) == ["learns", "fp16 + GradScaler", "DDP, 2 ranks"]
    assert all(status == "PASS" for status, _ in rows.values()), rows
    assert "gloo on CPU" in rows["DDP, 2 ranks"][1] and "final scale" in rows["fp16 + GradScaler"][1]
    assert "3 PASS, 0 FAIL" in proc.stdout


@pytest.mark.timeout(300)
def test_a_run_that_cannot_learn_fails_the_learns_row_and_the_script():
    proc, rows = gpu_check("--rows=learns", "--lr=0", "--compile=False")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    status, detail = rows["learns"]
    assert status == "FAIL" and "at lr 0," in detail, detail


@pytest.mark.timeout(120)
def test_a_row_past_its_timeout_is_killed_and_fails_by_name():
    proc, rows = gpu_check("--rows=sampling", "--timeout=0.5")
    assert proc.returncode == 1
    status, detail = rows["KV-cache sampling"]
    assert status == "FAIL" and detail.startswith("timed out after 0.5 s"), detail
    proc, _ = gpu_check("--rows=learns,nope")
    assert proc.returncode == 2 and "unknown row 'nope'" in proc.stderr
