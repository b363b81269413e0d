"""Turn the configs' 'auto' device and dtype into what this process really has. Torch only."""

from contextlib import nullcontext

import torch

PTDTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but this machine has no CUDA GPU; use device='cpu' or 'auto'")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device='mps' but MPS is not available here; use device='cpu' or 'auto'")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' is bf16 on GPUs that support it, fp16 on older GPUs, fp32 elsewhere (CPU autocast is slow)."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def autocast_context(device: str, dtype: str):
    """Mixed precision for the forward pass; a no-op in float32."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if dtype == "float32":
        return nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype=PTDTYPES[dtype])


def enable_tf32() -> None:
    """TF32 matmuls and convolutions on Ampere+ GPUs: ~free speed, precision fine for training."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
