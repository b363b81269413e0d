"""nanoGPT-compatible checkpoints: ckpt.pt written atomically, loaded with weights_only=True.

The dict keeps nanoGPT's keys ('model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config'),
so a checkpoint moves both ways between nanoGPT and nanogpt-ray. 'model_args' holds exactly the keys nanoGPT's
GPTConfig takes (its sample.py and train.py call GPTConfig(**model_args)); our model options sit in
'model_extras' and our extra resume state in 'resume', both of which nanoGPT ignores.
"""

from __future__ import annotations

import io
import os

import torch

from .config import GPT2_PRESETS, GPTConfig, UserError
from .files import atomic_open
from .hf import from_pretrained
from .model import GPT
from .modern import build_gpt
from .storage import StorageError, is_uri, latest_checkpoint_file, read_bytes

CKPT_NAME = "ckpt.pt"
REQUIRED_KEYS = ("model", "model_args")
EXTRAS_KEY = "model_extras"


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


def model_entries(config: GPTConfig) -> dict:
    """The checkpoint's entries that say what the model is."""
    return {"model_args": config.nanogpt_args(), EXTRAS_KEY: config.our_args()}


def config_from_checkpoint(ckpt: dict, **overrides) -> GPTConfig:
    return GPTConfig.from_checkpoint(ckpt["model_args"], ckpt.get(EXTRAS_KEY), **overrides)


def model_from_checkpoint(ckpt: dict, dropout: float | None = None) -> GPT:
    model = build_gpt(config_from_checkpoint(ckpt, **({} if dropout is None else {"dropout": dropout})))
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
