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


TOKEN_DTYPES = ("uint16", "uint32")


def read_token_dtype(dataset_dir: str) -> np.dtype:
    meta_path = os.path.join(dataset_dir, "meta.json")
    if not os.path.exists(meta_path):
        return np.dtype("uint16")  # nanoGPT's own datasets carry no dtype: they are always uint16
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{meta_path} is not valid JSON ({type(e).__name__}: {e}); "
                        f"prepare the dataset again: {prepare_hint(dataset_dir)}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path} holds a JSON {type(meta).__name__}, not an object; "
                        f"prepare the dataset again: {prepare_hint(dataset_dir)}")
    name = meta.get("dtype", "uint16")
    # token ids are unsigned integers: anything else would read the .bin as garbage, not fail
    if name not in TOKEN_DTYPES:
        raise DataError(f"{meta_path} has dtype {name!r}; token files are {' or '.join(TOKEN_DTYPES)}")
    return np.dtype(name)


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


def max_token_id(data: np.ndarray, chunk: int = 1 << 24) -> int:
    """The largest token id in a (memory-mapped) token array, read a chunk at a time so a large file never
    has to sit in RAM at once; -1 for an empty array."""
    top = -1
    for start in range(0, len(data), chunk):
        top = max(top, int(np.max(data[start:start + chunk])))
    return top


def check_token_ids(data: np.ndarray, vocab_size: int, name: str) -> None:
    """Fail in one line when a token id is outside the model's vocabulary: otherwise the embedding lookup
    fails with an IndexError deep inside a worker (or a device-side assert on a GPU)."""
    top = max_token_id(data)
    if top >= vocab_size:
        raise DataError(f"{name} holds token id {top}, but the model's vocab_size is {vocab_size}; prepare the "
                        "data with the model's tokenizer, or set vocab_size in meta.json to cover every id")


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
