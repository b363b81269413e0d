"""A run that ends with one of our UserErrors reads as one line: the whole output of the command, as a person
sees it, holds no traceback from our code, Ray Train's workers or its controller (a diverged run, before any
checkpoint), in local mode and on Ray Train workers (NANOGPT_RAY_TRACEBACKS=1 or --verbose=True keep them)."""

import os
import pathlib
import subprocess
import sys

import pytest

from tests.train_data import make_dataset

REPO = pathlib.Path(__file__).resolve().parents[2]
ONE_LINE = ("nanogpt-ray train: error: loss is not finite at iteration 1 and there is no checkpoint to roll back "
            "to; lower learning_rate or check the data")


def diverge(tmp_path, num_workers: int, **env) -> subprocess.CompletedProcess:
    return train(tmp_path, dict(num_workers=num_workers), **env)


def train(tmp_path, overrides: dict, **env) -> subprocess.CompletedProcess:
    """`nanogpt-ray train` of a tiny model that diverges at once (lr 1e9), with `overrides`, as a person runs it."""
    make_dataset(tmp_path / "data")
    flags = dict(dataset="tiny", data_root=tmp_path / "data", out_dir=tmp_path / "out", n_layer=1, n_head=2, n_embd=32,
                 block_size=16, batch_size=4, gradient_accumulation_steps=2, num_workers=1, device="cpu",
                 dtype="float32", compile=False, learning_rate=1e9, warmup_iters=0, max_iters=20, eval_interval=10,
                 log_interval=1, eval_iters=2, data_order="worker_invariant")
    flags.update(overrides)
    # a person's environment: Ray's own defaults, only usage stats off (RAY_ADDRESS=local: never another cluster)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "NANOGPT_RAY_"))}
    return subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", "train", *(f"--{k}={v}" for k, v in flags.items())],
                          cwd=tmp_path, capture_output=True, text=True, timeout=280,
                          env={**clean, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **env})


@pytest.mark.timeout(300)
@pytest.mark.parametrize("num_workers", [1, pytest.param(2, marks=pytest.mark.ray)])
def test_a_diverged_run_ends_in_one_line_with_no_traceback_in_its_output(tmp_path, num_workers):
    done = diverge(tmp_path, num_workers)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert done.stderr.strip().splitlines()[-1] == ONE_LINE, output[-3000:]
    assert "Traceback" not in output and 'File "' not in output and "Error in" not in output, output[-4000:]
    assert output.count("loss is not finite") == 1, output[-4000:]
    assert ("Ray Train workers" if num_workers == 2 else "local mode") in done.stdout


# Other mistakes a person makes, each caught at a different place: the config parser, the driver's checks before
# any worker, and the loop itself (local mode runs it inside Ray Train's machinery, which must not add a traceback).
OTHER_MISTAKES = {
    "a typo in a key": (dict(lerning_rate=1e-3), "unknown config key 'lerning_rate'"),
    "a dataset that is not there": (dict(dataset="nope"), "nope"),
    "a block larger than the data": (dict(block_size=30_000), "block_size"),
    "a resume with nothing to resume": (dict(init_from="resume"), "no checkpoint"),
    "a device this machine does not have": (dict(device="mps"), "device='mps'"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mistake", OTHER_MISTAKES)
def test_other_mistakes_end_in_one_line_too(tmp_path, mistake):
    overrides, named = OTHER_MISTAKES[mistake]
    done = train(tmp_path, overrides)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("nanogpt-ray train: error: ") and named in errors[0], output[-3000:]
    assert "Traceback" not in output and 'File "' not in output, output[-3000:]
