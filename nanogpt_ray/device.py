"""Devices: the configs' 'auto' device and dtype made concrete, and the peak FLOP/s MFU is measured against.
Torch only."""

import time
from contextlib import nullcontext

import torch

from .config import UserError

PTDTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(UserError):
    """A device this machine does not have; one line that says what to use instead."""


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} but this machine has no CUDA GPU; use device='cpu' or 'auto'")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError("device='mps' but MPS is not available here; use device='cpu' or 'auto'")
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


# ----------------------------------------------------------------------------- peak FLOP/s for MFU

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched against the CUDA device name.
# Order matters: the first substring found wins ("H100 PCIe" before "H100").
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
)


def peak_flops_for_device(device_name: str):
    """bf16 peak of a named CUDA device, or None when the table does not know it."""
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


_MEASURED_PEAKS = {}


def measure_matmul_flops(device="cpu", dtype=torch.float32, size=1024, repeats=10):
    """Measured matmul throughput of a device, the best achievable peak where no data sheet applies (CPUs)."""
    key = (str(device), dtype, size)
    if key not in _MEASURED_PEAKS:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm up the kernels and thread pool
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            if a.is_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        _MEASURED_PEAKS[key] = 2 * size**3 / best
    return _MEASURED_PEAKS[key]


def default_peak_flops(device=None):
    """The peak MFU is measured against: data-sheet bf16 for known GPUs, measured fp32 matmul otherwise."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = peak_flops_for_device(name)
        return peak if peak is not None else measure_matmul_flops(device, torch.bfloat16, size=4096)
    return measure_matmul_flops("cpu")
