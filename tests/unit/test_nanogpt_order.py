"""By default the loop draws its randomness in nanoGPT's order, so one process prints nanoGPT's losses.

The losses below were printed by nanoGPT's own train.py (github.com/karpathy/nanoGPT, unchanged, CPU, float32,
torch's default threads) on the dataset tests/train_data.make_dataset writes, with a meta.pkl of vocab_size 65
beside it and the flags of tiny_config plus dropout=0.1:
  python train.py --dataset=tiny --device=cpu --compile=False --dtype=float32 --n_layer=2 --n_head=2 --n_embd=32
    --block_size=32 --batch_size=8 --dropout=0.1 --bias=False --gradient_accumulation_steps=2
    --learning_rate=3e-3 --min_lr=3e-4 --warmup_iters=5 --lr_decay_iters=100 --max_iters=20
    --eval_interval=10 --log_interval=5 --eval_iters=4
Why they can agree: both seed torch's global generator with 1337, then draw from it in the same order: model
init, the first training batch (fetched before the loop), eval_iters train and val batches at each eval, and in
each micro-step the dropout masks of the forward, then the next batch. Dropout > 0 puts the dropout draws
between the batch draws, so a change to either order shows.
"""

import pytest
import torch

from nanogpt_ray.checkpoint import CKPT_NAME
from nanogpt_ray.train_loop import run_bare
from tests.train_data import make_dataset, tiny_config

NANOGPT_EVAL_LOSSES = {0: (4.1766, 4.1779), 10: (3.7091, 3.7045), 20: (3.1966, 3.2172)}
"""iteration: (train loss, val loss), as nanoGPT printed them (4 decimals)."""
NANOGPT_ORDER = dict(data_order="nanogpt", dropout=0.1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root)
    return root


@pytest.fixture(scope="module")
def full_run(data_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("full") / "out"
    return run_bare(tiny_config(data_root, out_dir, **NANOGPT_ORDER)), out_dir


@pytest.mark.timeout(120)
def test_one_process_prints_nanogpts_train_and_val_losses_at_every_eval(full_run):
    runtime, _ = full_run
    ours = {h["iter"]: (h["train_loss"], h["val_loss"]) for h in runtime.history if "val_loss" in h}
    assert sorted(ours) == sorted(NANOGPT_EVAL_LOSSES)
    for it, (train_loss, val_loss) in NANOGPT_EVAL_LOSSES.items():
        # printed to 4 decimals; float32 sums in another order move the 6th
        assert ours[it][0] == pytest.approx(train_loss, abs=6e-5), it
        assert ours[it][1] == pytest.approx(val_loss, abs=6e-5), it


@pytest.mark.timeout(120)
def test_a_resumed_run_in_nanogpts_order_ends_bit_identical(full_run, data_root, tmp_path):
    _, full_dir = full_run
    run_bare(tiny_config(data_root, tmp_path / "half", max_iters=10, **NANOGPT_ORDER))
    resumed = run_bare(tiny_config(data_root, tmp_path / "half", init_from="resume", **NANOGPT_ORDER))
    assert [h["val_loss"] for h in resumed.history if "val_loss" in h][-1] == pytest.approx(NANOGPT_EVAL_LOSSES[20][1], abs=6e-5)
    full = torch.load(full_dir / CKPT_NAME, weights_only=True)
    half = torch.load(tmp_path / "half" / CKPT_NAME, weights_only=True)
    assert half["iter_num"] == full["iter_num"] == 20 and half["resume"]["data_rng"] == []
    for key, value in full["model"].items():
        assert torch.equal(value, half["model"][key]), key
    assert torch.equal(full["resume"]["torch_rng"][0], half["resume"]["torch_rng"][0])
