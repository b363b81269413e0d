"""bench.py on a tiny model, in this process and through the CLI: timing, MFU, profiler trace, JSON, bad input."""

import json
import os
import subprocess
import sys

import pytest

from nanogpt_ray.bench import BenchError, run_bench
from nanogpt_ray.config import BenchConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, real_data=False, compile=False,
            device="cpu", warmup_steps=1, timed_steps=3)
TINY_FLAGS = [f"--{k}={v}" for k, v in TINY.items()]


def run_cli(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", "bench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(120)
def test_tiny_model_reports_positive_tokens_per_s_and_mfu_in_0_1():
    row = run_bench(BenchConfig(**TINY), verbose=False)
    assert row["tokens_per_s"] > 0
    assert 0 < row["mfu"] <= 1
    assert row["ms_per_iter"] > 0
    # tokens/s and ms/iter describe the same steps
    assert row["tokens_per_s"] == pytest.approx(4 * 32 / (row["ms_per_iter"] / 1000), rel=1e-6)
    assert row["peak_memory_bytes"] > 0 and row["memory_kind"] == "process peak RSS"
    assert "measured" in row["peak_flops_source"] and row["peak_flops"] > 0
    for key in ("node", "device", "ms_per_iter", "tokens_per_s", "mfu", "peak_memory_bytes"):
        assert key in row


@pytest.mark.timeout(180)
def test_profile_writes_a_tensorboard_trace(tmp_path):
    profile_dir = tmp_path / "trace"
    row = run_bench(BenchConfig(**TINY, profile=True, profile_dir=str(profile_dir)), verbose=False)
    traces = [name for name in os.listdir(profile_dir) if name.endswith(".pt.trace.json")]
    assert len(traces) == 1, os.listdir(profile_dir)
    with open(profile_dir / traces[0]) as f:
        trace = json.load(f)
    assert trace["traceEvents"], "the trace has no events"
    assert row["profile_dir"] == str(profile_dir)


@pytest.mark.timeout(240)
def test_json_round_trips_through_the_cli(tmp_path):
    out = tmp_path / "rows.json"
    result = run_cli(*TINY_FLAGS, f"--json={out}")
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert row["tokens_per_s"] > 0 and 0 < row["mfu"] <= 1 and row["peak_memory_bytes"] > 0
    assert row["batch_size"] == 4 and row["block_size"] == 32
    # what is printed is what is written
    assert f"tokens/s: {row['tokens_per_s']:,.0f}" in result.stdout
    assert "measured fp32 matmul peak" in result.stdout


@pytest.mark.timeout(120)
def test_real_data_without_prepared_dataset_is_one_line_naming_prepare(tmp_path):
    result = run_cli(*TINY_FLAGS, "--real_data=True", "--dataset=not_prepared", f"--data_root={tmp_path}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "nanogpt-ray prepare not_prepared" in lines[0]


@pytest.mark.timeout(120)
def test_unknown_device_is_one_line():
    result = run_cli(*TINY_FLAGS, "--device=tpu")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "device='tpu'" in lines[0], result.stderr


@pytest.mark.timeout(60)
def test_cuda_device_without_a_gpu_is_a_bench_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BenchError, match="no CUDA GPU"):
        run_bench(BenchConfig(**dict(TINY, device="cuda")), verbose=False)


@pytest.mark.timeout(120)
def test_scaling_with_accumulation_that_does_not_divide_is_one_line_before_ray_starts():
    result = run_cli(*TINY_FLAGS, "--scaling=True", "--max_workers=3", "--gradient_accumulation_steps=2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--gradient_accumulation_steps=6" in lines[0], result.stderr
    assert "Ray" not in result.stdout  # failed before any cluster was started

