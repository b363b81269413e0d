"""nanoGPT-compatible checkpoints: ckpt.pt written atomically, loaded with weights_only=True.

The dict keeps nanoGPT's keys ('model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config'),
so a checkpoint moves both ways between nanoGPT and nanogpt-ray; our extra resume state sits in 'resume'.
"""

from __future__ import annotations

import io
import os

import torch

from .config import GPT2_PRESETS, UserError
from .files import atomic_open
from .hf import from_pretrained
from .model import GPT, GPTConfig
from .storage import StorageError, is_uri, latest_checkpoint_file, read_bytes

CKPT_NAME = "ckpt.pt"
REQUIRED_KEYS = ("model", "model_args")
MODEL_ARG_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout", "gelu", "arch")


class CheckpointError(UserError):
    """A checkpoint that is missing or not ours; one line."""


def clean_state_dict(state: dict) -> dict:
    """Drop the prefixes torch.compile (_orig_mod.) and DDP (module.) add, so keys match a bare GPT."""
    cleaned = {}
    for key, value in state.items():
        stripped = True
        while stripped:  # any order: DDP(compile(m)) -> module._orig_mod., compile(DDP(m)) -> _orig_mod.module.
            stripped = False
            for prefix in ("_orig_mod.", "module."):
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def save_checkpoint(ckpt: dict, path: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`: a kill at any moment
    leaves either the old checkpoint or the new one, never half of one."""
    with atomic_open(path, "wb", fsync=True) as f:
        torch.save(ckpt, f)


def checkpoint_file(path: str) -> str:
    """A ckpt.pt path from a file, an out_dir, or a Ray checkpoint directory; for a URI also a run's folder in
    storage (<storage_path>/<run_name>: its latest checkpoint)."""
    if is_uri(path):
        try:
            return latest_checkpoint_file(path)
        except StorageError as e:
            raise CheckpointError(str(e)) from None
    return os.path.join(path, CKPT_NAME) if os.path.isdir(path) else path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    path = checkpoint_file(path)
    try:
        source = io.BytesIO(read_bytes(path)) if is_uri(path) else path  # an object is read whole, then loaded
    except (FileNotFoundError, StorageError):
        source = None
    if source is None or (not is_uri(path) and not os.path.exists(path)):
        raise CheckpointError(f"no checkpoint at {path}; train first or pass --out_dir/--ckpt_path of a run")
    try:
        ckpt = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a checkpoint that loads with weights_only=True ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a nanoGPT/nanogpt-ray checkpoint (needs keys {', '.join(REQUIRED_KEYS)})")
    return ckpt


def model_from_checkpoint(ckpt: dict, dropout: float | None = None) -> GPT:
    model_args = {k: ckpt["model_args"][k] for k in MODEL_ARG_KEYS if k in ckpt["model_args"]}
    model_args.setdefault("gelu", "exact")  # nanoGPT's checkpoints carry no such key; its MLP is nn.GELU()
    model_args.setdefault("arch", "gpt2")  # nor this one: theirs is always the GPT-2 flavour
    if dropout is not None:
        model_args["dropout"] = dropout
    model = GPT(GPTConfig(**model_args))
    model.load_state_dict(clean_state_dict(ckpt["model"]))
    return model


def load_model(init_from: str = "resume", out_dir: str = "out", ckpt_path: str = "", device: str = "cpu"):
    """The model sampling and benchmarks run: (model in eval mode on device, checkpoint dict or None).
    init_from: 'resume' (ckpt_path, else out_dir/ckpt.pt), a GPT-2 name, or a local GPT-2 directory."""
    if init_from == "resume":
        ckpt = load_checkpoint(ckpt_path or out_dir)
        model = model_from_checkpoint(ckpt)
    elif init_from in GPT2_PRESETS or os.path.isdir(init_from):
        ckpt, model = None, from_pretrained(init_from)
    else:
        raise CheckpointError(f"init_from={init_from!r}; use 'resume', one of {', '.join(GPT2_PRESETS)}, or a GPT-2 directory")
    return model.eval().to(device), ckpt
