"""The GPU's numerics, tested on the CPU (torch runs them there too): the loop in bf16 autocast, fp16 with
GradScaler (its state and the steps it skipped saved and restored exactly), and torch.compile."""

import pytest
import torch

from nanogpt_ray.checkpoint import CKPT_NAME
from nanogpt_ray.config import TrainConfig, from_dict
from nanogpt_ray.train_loop import TrainState, optimizer_step, run_bare
from tests.train_data import make_dataset, tiny_config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root)
    return root


def _run(data_root, out_dir, **overrides):
    return run_bare(from_dict(TrainConfig, tiny_config(data_root, out_dir, **overrides)))


def _val_losses(runtime) -> list[float]:
    return [h["val_loss"] for h in runtime.history if "val_loss" in h]


@pytest.mark.timeout(120)
def test_bf16_autocast_trains_like_fp32_with_bf16_rounding(data_root, tmp_path):
    fp32 = _val_losses(_run(data_root, tmp_path / "fp32", dtype="float32"))
    bf16 = _val_losses(_run(data_root, tmp_path / "bf16", dtype="bfloat16"))
    assert bf16[-1] < bf16[0] - 0.5  # it learns
    gaps = [abs(a - b) for a, b in zip(fp32, bf16)]
    assert 0 < max(gaps) <= 0.05, gaps  # autocast really ran in bf16 (not bit-equal), and stayed close


def test_optimizer_step_counts_the_steps_gradscaler_skips():
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    state = TrainState(model=model, optimizer=optimizer, scaler=scaler, batches=None)
    before = model.weight.detach().clone()
    for overflow in (True, False):
        scaler.scale(model(torch.ones(2, 4)).sum()).backward()
        if overflow:
            model.weight.grad[0, 0] = float("inf")
        optimizer_step(state)
        optimizer.zero_grad(set_to_none=True)
        if overflow:  # skipped: weights untouched, the scale halved
            assert int(state.skipped_steps) == 1 and scaler.get_scale() == 512.0
            assert torch.equal(model.weight, before)
    assert int(state.skipped_steps) == 1 and not torch.equal(model.weight, before)


@pytest.mark.timeout(180)
def test_fp16_scaler_state_and_skipped_steps_are_checkpointed_and_restored_exactly(data_root, tmp_path):
    run = dict(dtype="float16", gradient_accumulation_steps=1, batch_size=4, eval_interval=3, eval_iters=1,
               log_interval=1, always_save_checkpoint=True)
    _run(data_root, tmp_path / "out", max_iters=3, **run)
    path = tmp_path / "out" / CKPT_NAME
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["resume"]["scaler"]["scale"] == 65536.0 and ckpt["resume"]["scaler"]["_growth_tracker"] == 3
    assert ckpt["resume"]["skipped_steps"] == 0
    # as if three steps had overflowed: three skips, the scale backed off three times, the growth count reset
    ckpt["resume"]["scaler"].update(scale=8192.0, _growth_tracker=0)
    ckpt["resume"]["skipped_steps"] = 3
    torch.save(ckpt, path)
    history = _run(data_root, tmp_path / "out", max_iters=6, init_from="resume", **run).history
    resumed = torch.load(path, weights_only=True)["resume"]
    assert resumed["scaler"]["scale"] == 8192.0 and resumed["scaler"]["_growth_tracker"] == 3
    assert resumed["skipped_steps"] == 3
    assert [h["skipped_steps"] for h in history if "loss" in h] == [3, 3]  # the log reports carry the count


@pytest.mark.timeout(600)
def test_compiled_model_trains_like_the_eager_one(data_root, tmp_path):
    run = dict(n_layer=1, max_iters=4, eval_interval=4, eval_iters=2, log_interval=2)
    eager = _val_losses(_run(data_root, tmp_path / "eager", **run))
    compiled_runtime = _run(data_root, tmp_path / "compiled", compile=True, **run)
    compiled = _val_losses(compiled_runtime)
    assert compiled == pytest.approx(eager, abs=1e-4) and compiled[-1] < compiled[0]
    ckpt = torch.load(tmp_path / "compiled" / CKPT_NAME, weights_only=True)
    assert ckpt["iter_num"] == 4 and not any(k.startswith("_orig_mod.") for k in ckpt["model"])
