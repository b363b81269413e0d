"""Tiny datasets and configs for the training tests, written directly with numpy (no prepare step)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

VOCAB = 65


def make_dataset(root: pathlib.Path, name: str = "tiny", n_train: int = 20_000, n_val: int = 4_000) -> pathlib.Path:
    """A learnable toy corpus: a repeating pattern with noise, char-style vocabulary of 65 tokens."""
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, VOCAB, size=97)
    def tokens(n):
        t = np.resize(pattern, n).copy()
        noise = rng.random(n) < 0.05
        t[noise] = rng.integers(0, VOCAB, size=int(noise.sum()))
        return t.astype(np.uint16)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    tokens(n_train).tofile(folder / "train.bin")
    tokens(n_val).tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "char", "vocab_size": VOCAB,
                                                  "chars": [chr(33 + i) for i in range(VOCAB)], "dtype": "uint16"}))
    return folder


def tiny_config(data_root: pathlib.Path, out_dir: pathlib.Path, **overrides) -> dict:
    """A 2-layer, 32-wide GPT on the toy corpus, CPU fp32, no compile: a step takes milliseconds."""
    values = dict(
        dataset="tiny", data_root=str(data_root), out_dir=str(out_dir),
        n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, dropout=0.0, bias=False,
        gradient_accumulation_steps=2, learning_rate=3e-3, min_lr=3e-4, warmup_iters=5, lr_decay_iters=100,
        max_iters=20, eval_interval=10, log_interval=5, eval_iters=4, device="cpu", dtype="float32",
        compile=False, num_workers=1, wandb_log=False, max_failures=0,
        # the same batches on any worker count, which most training tests compare; tests of nanoGPT's order
        # (the default) pass data_order="nanogpt"
        data_order="worker_invariant",
    )
    values.update(overrides)
    return values


def checkpoint_in(out_dir) -> dict:
    """The run's out_dir/ckpt.pt, loaded as every reader must (weights_only)."""
    import torch

    return torch.load(pathlib.Path(out_dir) / "ckpt.pt", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints at the same iteration with bit-identical weights and AdamW moments."""
    import torch

    assert a["iter_num"] == b["iter_num"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][pid]["exp_avg"])
