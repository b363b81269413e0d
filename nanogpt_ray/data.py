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


class NanoGPTBatches:
    """Training batches in nanoGPT's order: every draw from torch's global generator (seeded seed + rank, as
    nanoGPT's seed_offset), and the next batch fetched right after each forward, so an iteration's first batch is
    drawn before that iteration's eval, as nanoGPT's train.py does. One process then sees nanoGPT's batches,
    eval batches and dropout masks; each rank of several draws its own, so the worker count changes the run.

    A checkpoint keeps the generator's state from before the batch in hand: drawing that batch again after a
    restore (`prime`) continues the run exactly."""

    prefetches_next_iteration = True

    def __init__(self, data: np.ndarray, batch_size: int, block_size: int, device: str, micro_steps: int):
        self.data, self.batch_size, self.block_size, self.device = data, batch_size, block_size, device
        self.micro_steps = micro_steps
        self.held, self.rng_before_held = None, torch.get_rng_state()

    def prime(self) -> None:
        """Draw the batch in hand: before the loop, and after the generator is restored."""
        self.rng_before_held = torch.get_rng_state()
        self.held = get_batch(self.data, self.batch_size, self.block_size, None, self.device)

    def first(self):
        """The iteration's first batch: the one fetched after the last forward."""
        return self.held

    def next(self):
        self.prime()
        return self.held

    def skip_iteration(self) -> None:
        """Move past the batches an iteration would train on: the one in hand and the micro_steps - 1 after it."""
        for _ in range(self.micro_steps - 1):
            skip_batch(self.data, self.batch_size, self.block_size, None)
        self.prime()

    def torch_rng_state(self) -> torch.Tensor:
        return self.rng_before_held

    def stream_states(self) -> list:
        return []

    def load_stream_states(self, states: list) -> None:
        """No generators of its own: the global one is restored with the other torch RNG states."""


class MicroStepBatches:
    """Training batches that do not depend on the worker count: global micro-step k (0 <= k <
    gradient_accumulation_steps) draws from its own generator seeded seed + k, and a worker runs the micro-steps
    it is given. 1 worker x accumulation 2 and 2 workers x accumulation 1 then train on the same batches, and
    an elastic resize keeps the data stream. Each iteration draws its first batch when it starts."""

    prefetches_next_iteration = False

    def __init__(self, data: np.ndarray, batch_size: int, block_size: int, device: str, seed: int, streams: range):
        self.data, self.batch_size, self.block_size, self.device = data, batch_size, block_size, device
        self.generators = {k: torch.Generator().manual_seed(seed + k) for k in streams}
        self._order = iter(())

    def prime(self) -> None:
        """Nothing is held between iterations."""

    def first(self):
        self._order = iter(self.generators.values())
        return self.next()

    def next(self):
        return get_batch(self.data, self.batch_size, self.block_size, next(self._order), self.device)

    def skip_iteration(self) -> None:
        for generator in self.generators.values():
            skip_batch(self.data, self.batch_size, self.block_size, generator)

    def torch_rng_state(self) -> torch.Tensor:
        return torch.get_rng_state()  # dropout's generator

    def stream_states(self) -> list:
        return [g.get_state() for g in self.generators.values()]

    def load_stream_states(self, states: list) -> None:
        """`states`: every global micro-step's, index k (stream_states of every rank, in rank order)."""
        for k, generator in self.generators.items():
            generator.set_state(states[k])
