"""Token files on disk and random training batches from them. numpy + torch only.

A prepared dataset is a folder with train.bin and val.bin (flat token ids, nanoGPT's format) and meta.json
(tokenizer, vocab size, token dtype). Files are memory-mapped, so a 10 GB dataset costs no RAM.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from .config import UserError


class DataError(UserError):
    """A dataset problem a person has to fix; one line that says how."""


def prepare_hint(dataset_dir: str) -> str:
    name = os.path.basename(os.path.normpath(dataset_dir))
    root = os.path.dirname(os.path.normpath(dataset_dir))
    return f"nanogpt-ray prepare {name} --data_root={root}"


def read_token_dtype(dataset_dir: str) -> np.dtype:
    meta_path = os.path.join(dataset_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            return np.dtype(json.load(f).get("dtype", "uint16"))
    return np.dtype("uint16")  # nanoGPT's own datasets carry no dtype: they are always uint16


def load_split(dataset_dir: str, split: str) -> np.memmap:
    """The memory-mapped tokens of 'train' or 'val'."""
    path = os.path.join(dataset_dir, f"{split}.bin")
    if not os.path.exists(path):
        raise DataError(f"{path} does not exist; prepare the dataset first: {prepare_hint(dataset_dir)}")
    return np.memmap(path, dtype=read_token_dtype(dataset_dir), mode="r")


def check_block_size(data: np.ndarray, block_size: int, name: str) -> None:
    if len(data) <= block_size:
        raise DataError(f"{name} holds {len(data)} tokens, too few for block_size={block_size}; "
                        "lower block_size or prepare more data")


def skip_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator) -> None:
    """Advance `generator` past one batch without reading it: the same draw get_batch makes."""
    torch.randint(len(data) - block_size, (batch_size,), generator=generator)


def get_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator, device: str = "cpu"):
    """batch_size random windows of block_size tokens: inputs x and next-token targets y, both (B, T) int64.

    Offsets come from `generator`, so each rank's batches are reproducible and can be resumed exactly.
    """
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix.tolist()])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix.tolist()])
    if device.startswith("cuda"):
        # pinned memory lets the copy run asynchronously while the GPU is still busy with the last step
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
