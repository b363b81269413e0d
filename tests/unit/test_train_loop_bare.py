"""The training loop without Ray: the same function the Ray workers run, in this process."""

import os
import pathlib
import time

import pytest
import torch

from nanogpt_ray.checkpoint import CKPT_NAME
from nanogpt_ray.config import TrainConfig, from_dict
from nanogpt_ray.train_loop import Runtime, get_lr, run_bare, train
from tests.nan_injection import nan_runtime
from tests.train_data import make_dataset, tiny_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root)
    return root


def _run(data_root, out_dir, **overrides):
    return run_bare(from_dict(TrainConfig, tiny_config(data_root, out_dir, **overrides)))


def _run_with_nan(data_root, out_dir, nan_at: int, per_batch: bool = False, **overrides):
    """The bare loop with rank 0's loss NaN at iteration nan_at (once, or every time that batch comes back)."""
    return train(tiny_config(data_root, out_dir, **overrides), nan_runtime(Runtime, nan_at, per_batch=per_batch)())


@pytest.mark.timeout(120)
def test_bare_loop_lowers_loss_and_writes_a_weights_only_checkpoint(data_root, tmp_path):
    reporter = _run(data_root, tmp_path / "out", max_iters=30)
    val = [h["val_loss"] for h in reporter.history if "val_loss" in h]
    assert len(val) == 4 and val[-1] < val[0] - 0.5
    assert [h["iter"] for h in reporter.history if "loss" in h] == [5, 15, 25]  # eval iterations report val instead
    ckpt = torch.load(tmp_path / "out" / CKPT_NAME, weights_only=True)
    assert ckpt["iter_num"] == 30 and ckpt["model_args"]["vocab_size"] == 65
    assert set(ckpt) >= {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config", "resume"}
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert len(ckpt["resume"]["data_rng"]) == 2  # one stream per global micro-step


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_bare_resume_continues_exactly(data_root, tmp_path, dropout):
    # dropout > 0: the dropout RNG must be restored, and nothing else (an MFU measurement) may draw from it
    _run(data_root, tmp_path / "full", max_iters=20, dropout=dropout)
    _run(data_root, tmp_path / "half", max_iters=10, dropout=dropout)
    _run(data_root, tmp_path / "half", max_iters=20, init_from="resume", dropout=dropout)
    full = torch.load(tmp_path / "full" / CKPT_NAME, weights_only=True)
    resumed = torch.load(tmp_path / "half" / CKPT_NAME, weights_only=True)
    assert resumed["iter_num"] == 20
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


@pytest.mark.timeout(60)
def test_eval_only_reports_once_and_saves_nothing(data_root, tmp_path):
    reporter = _run(data_root, tmp_path / "out", eval_only=True)
    assert len(reporter.history) == 1 and "val_loss" in reporter.history[0]
    assert not (tmp_path / "out" / CKPT_NAME).exists()


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=100)
    assert get_lr(0, cfg) < get_lr(9, cfg) < 1.0
    assert get_lr(10, cfg) == pytest.approx(1.0)
    assert get_lr(55, cfg) == pytest.approx(0.55)
    assert get_lr(100, cfg) == pytest.approx(0.1) and get_lr(500, cfg) == 0.1


@pytest.mark.timeout(180)
def test_resumed_run_continues_the_same_offline_wandb_run(data_root, tmp_path):
    # two processes, as a person resuming a run has (wandb keeps per-process state)
    import subprocess
    import sys

    out_dir = tmp_path / "out"

    def run_process(**overrides):
        flags = [f"--{k}={v}" for k, v in tiny_config(data_root, out_dir, wandb_log=True, wandb_project="nanogpt-test",
                                                      **overrides).items()]
        env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(REPO_ROOT))
        done = subprocess.run([sys.executable, "-m", "nanogpt_ray.train_loop", *flags], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]

    run_process(max_iters=10)
    first_id = torch.load(out_dir / CKPT_NAME, weights_only=True)["resume"]["wandb_run_id"]
    time.sleep(1.1)  # wandb names offline run folders by the second: two runs in one second share a folder
    run_process(max_iters=20, init_from="resume")
    ckpt = torch.load(out_dir / CKPT_NAME, weights_only=True)
    assert ckpt["iter_num"] == 20 and ckpt["resume"]["wandb_run_id"] == first_id
    runs = sorted((out_dir / "wandb").glob(f"offline-run-*-{first_id}"))
    assert len(runs) == 2  # one folder per process, both logging to the same run id
    assert all(b"val/loss" in (run / f"run-{first_id}.wandb").read_bytes() for run in runs)


@pytest.mark.timeout(120)
def test_a_gpt2_bpe_dataset_trains_with_nanogpts_padded_vocabulary(tmp_path):
    import json

    import numpy as np

    from nanogpt_ray.tokenizer import model_vocab_size

    folder = tmp_path / "data" / "bpe"
    folder.mkdir(parents=True)
    tokens = np.random.default_rng(0).integers(0, 50257, 4096).astype(np.uint16)
    tokens.tofile(folder / "train.bin")
    tokens.tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16"}))
    run_bare(from_dict(TrainConfig, tiny_config(tmp_path / "data", tmp_path / "out", dataset="bpe", max_iters=2,
                                                eval_interval=2)))
    ckpt = torch.load(tmp_path / "out" / CKPT_NAME, weights_only=True)
    assert ckpt["model_args"]["vocab_size"] == 50304 and ckpt["model"]["lm_head.weight"].shape[0] == 50304
    assert model_vocab_size({"tokenizer": "char", "vocab_size": 65, "chars": ["a"]}) == 65  # char vocab as is
    assert model_vocab_size({"tokenizer": "cl100k_base", "vocab_size": 100277}) == 100288


# ---------------------------------------------------------------------------- non-finite losses

@pytest.mark.timeout(120)
@pytest.mark.parametrize("data_order", ["worker_invariant", "nanogpt"])
def test_a_bad_batch_is_skipped_after_the_rollback_instead_of_replayed(data_root, tmp_path, data_order):
    from nanogpt_ray.train_loop import NonFiniteLossError

    # the loss is NaN every time the batch first drawn at iteration 7 is seen: a bad batch, not bad luck
    runtime = _run_with_nan(data_root, tmp_path / "skip", 7, per_batch=True, max_iters=12, eval_interval=5,
                            log_interval=1, max_nan_rollbacks=2, data_order=data_order)
    last = runtime.history[-1]
    assert last["iter"] == 12 and last["nan_rollbacks"] == 1  # one rollback, then past the batch for good
    assert torch.load(tmp_path / "skip" / CKPT_NAME, weights_only=True)["resume"]["skip_iters"] == [7]
    # replaying the same batches meets the same NaN until the rollbacks run out
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at iteration 7; rolled back 2 times"):
        _run_with_nan(data_root, tmp_path / "replay", 7, per_batch=True, max_iters=12, eval_interval=5, log_interval=1,
                      max_nan_rollbacks=2, nan_skip_batches=False, data_order=data_order)


@pytest.mark.timeout(120)
def test_nan_lr_scale_lowers_the_learning_rate_after_each_rollback(data_root, tmp_path):
    cfg = dict(max_iters=12, eval_interval=5, log_interval=1, nan_lr_scale=0.5, decay_lr=False, learning_rate=1e-3)
    runtime = _run_with_nan(data_root, tmp_path / "out", 7, **cfg)
    lrs = {h["iter"]: h["lr"] for h in runtime.history if "lr" in h}
    assert lrs[4] == pytest.approx(1e-3) and lrs[11] == pytest.approx(5e-4)
    assert runtime.history[-1]["nan_rollbacks"] == 1


@pytest.mark.timeout(120)
def test_the_non_finite_check_waits_for_the_log_line_but_never_saves_a_bad_step(data_root, tmp_path):
    # NaN at iteration 6, read at the next sync point (the eval at 10, log_interval 10): the run still rolls back
    # to the checkpoint of iteration 5 and ends with finite weights
    runtime = _run_with_nan(data_root, tmp_path / "out", 6, max_iters=15, eval_interval=5, log_interval=10)
    assert runtime.history[-1]["nan_rollbacks"] == 1
    ckpt = torch.load(tmp_path / "out" / CKPT_NAME, weights_only=True)
    assert ckpt["iter_num"] == 15 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
