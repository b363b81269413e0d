"""The tiny sweep dataset and training overrides shared by the sweep integration tests."""

import json
import os

import numpy as np

# A tiny model on a tiny dataset: trials take seconds, so the Ray overhead dominates.
TRAIN = dict(dataset="words", gradient_accumulation_steps=1, batch_size=8, block_size=16, eval_iters=2,
             eval_interval=10, log_interval=10, warmup_iters=0, max_iters=60, lr_decay_iters=60, device="cpu",
             dtype="float32", compile=False, always_save_checkpoint=True, num_checkpoints_to_keep=1, use_gpu=False)


def write_dataset(root) -> str:
    """A small char dataset: random words from a fixed list, so a good learning rate learns it fast."""
    rng = np.random.default_rng(0)
    words = ["ray ", "tune ", "train ", "gpt ", "loss ", "sweep "]
    text = "".join(rng.choice(words, size=6000))
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    folder = os.path.join(root, "words")
    os.makedirs(folder, exist_ok=True)
    split = int(0.9 * len(ids))
    ids[:split].tofile(os.path.join(folder, "train.bin"))
    ids[split:].tofile(os.path.join(folder, "val.bin"))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"tokenizer": "char", "vocab_size": len(chars), "chars": chars, "dtype": "uint16"}, f)
    return str(root)
