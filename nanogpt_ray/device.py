"""Devices: the configs' 'auto' device and dtype made concrete, and the peak FLOP/s MFU is measured against.
Torch only."""

import re
import time
from contextlib import nullcontext

import torch

from .config import UserError


class DeviceError(UserError):
    """A device this process does not have; one line."""


PTDTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def choose_device(requested: str, local_rank: int, assigned_index: int | None, cuda_devices: int) -> str:
    """The device one worker trains on, decided from plain facts (unit-tested without a GPU):
    requested ('auto', 'cpu', 'mps', 'cuda', 'cuda:N'), the worker's local rank, the index (among the
    devices this process sees) of the GPU a launcher assigned to it (Ray Train: its get_device(); None where
    nothing assigns GPUs), and how many CUDA devices the process sees.

    'cuda' without an index means "my GPU": the assigned one under Ray, else cuda:<local_rank> (torchrun: one
    process per GPU), so workers of a node never pile onto one GPU. An explicit 'cuda:N' is taken as given
    and must exist."""
    if requested == "mps":
        check_mps()
    if requested in ("cpu", "mps"):
        return requested
    if requested == "auto" and cuda_devices == 0:
        return "cpu"
    if cuda_devices == 0:
        raise DeviceError(f"device={requested!r} but this machine has no CUDA GPU; use device='cpu' or 'auto'")
    kind, _, index = requested.partition(":")
    if index:
        if int(index) >= cuda_devices:
            raise DeviceError(f"device={requested!r} but this process sees {cuda_devices} CUDA device(s) "
                              f"(cuda:0..cuda:{cuda_devices - 1}); use 'cuda' for the GPU assigned to this worker")
        return requested
    if assigned_index is not None:
        return f"cuda:{assigned_index}"
    if local_rank >= cuda_devices:
        raise DeviceError(f"local rank {local_rank} has no GPU of its own: this node shows {cuda_devices} CUDA "
                          "device(s); start at most one worker per GPU")
    return f"cuda:{local_rank}"


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} but this machine has no CUDA GPU; use device='cpu' or 'auto'")
    if device == "mps":
        check_mps()
    return device


def check_mps() -> None:
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError("device='mps' but MPS is not available here; use device='cpu' or 'auto'")


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

# Dense 16-bit tensor-core peaks (FLOP/s, no sparsity): bf16 where the GPU has it, fp16 on V100 and T4 (no bf16;
# dtype='auto' trains those in fp16). Data sheets quote "with sparsity" figures: the dense peak is half of those.
# Matched against the CUDA device name as a regex, the first match wins (so "H100 NVL" before "H100"); word
# boundaries keep "L4" from matching "L40" and "H200" from matching "GH200". None: a known name without a
# data-sheet figure (MFU then says so instead of guessing).
PEAK_FLOPS = (
    (r"\bGB200\b", 2500e12),  # NVIDIA GB200 NVL72 data sheet: FP16/BF16 5 PFLOPS per GPU with sparsity
    (r"\bB200\b", 2250e12),  # NVIDIA HGX B200 data sheet: FP16/BF16 4.5 PFLOPS per GPU with sparsity
    (r"\bGH200\b", 989e12),  # NVIDIA GH200 Grace Hopper data sheet: BF16 1,979 TFLOPS with sparsity
    (r"\bH200 NVL\b", 835e12),  # NVIDIA H200 NVL data sheet: BF16 1,671 TFLOPS with sparsity
    (r"\bH200\b", 989e12),  # NVIDIA H200 (SXM) data sheet: BF16 1,979 TFLOPS with sparsity
    (r"\bH100 NVL\b", 835e12),  # NVIDIA H100 data sheet, H100 NVL column: BF16 1,671 TFLOPS with sparsity
    (r"\bH100 PCIe\b", 756e12),  # NVIDIA H100 data sheet, H100 PCIe column: BF16 1,513 TFLOPS with sparsity
    (r"\bH100\b", 989e12),  # NVIDIA H100 data sheet, H100 SXM column: BF16 1,979 TFLOPS with sparsity
    (r"\bH800 PCIe\b", 756e12),  # NVIDIA H800 PCIe data sheet: BF16 1,513 TFLOPS with sparsity
    (r"\bH800\b", 989e12),  # NVIDIA H800 SXM5 data sheet: BF16 1,979 TFLOPS with sparsity
    (r"\bA100\b", 312e12),  # NVIDIA A100 data sheet (SXM and PCIe, 40/80 GB): BF16 312 TFLOPS, 624 with sparsity
    (r"\bA800\b", 312e12),  # NVIDIA A800 data sheet: BF16 312 TFLOPS, 624 with sparsity
    (r"\bL40S\b", 362e12),  # NVIDIA L40S data sheet: BF16 362.05 TFLOPS, 733 with sparsity
    (r"\bL40\b", 181e12),  # NVIDIA L40 data sheet: BF16 181.05 TFLOPS, 362.1 with sparsity
    (r"\bL4\b", 121e12),  # NVIDIA L4 data sheet: BF16 242 TFLOPS with sparsity
    (r"\bA10G\b", None),  # an AWS part with no NVIDIA data sheet
    (r"\bA10\b", 125e12),  # NVIDIA A10 data sheet: BF16 125 TFLOPS, 250 with sparsity
    (r"\bRTX 4090\b", 165e12),  # NVIDIA Ada GPU architecture white paper: BF16 with FP32 accumulate 165.2 TFLOPS
    (r"\bRTX 3090\b(?! Ti)", 71e12),  # NVIDIA GA102 white paper, RTX 3090: BF16 with FP32 accumulate 71 TFLOPS
    (r"\bV100S\b", 130e12),  # NVIDIA V100S data sheet: FP16 tensor 130 TFLOPS
    (r"\bV100\b.*\bPCIE\b", 112e12),  # NVIDIA V100 data sheet, PCIe column: FP16 tensor 112 TFLOPS
    (r"\bV100\b", 125e12),  # NVIDIA V100 data sheet, SXM2 column: FP16 tensor 125 TFLOPS
    (r"\bT4\b", 65e12),  # NVIDIA T4 data sheet: mixed precision (FP16/FP32) 65 TFLOPS
)


def peak_flops_for_device(device_name: str):
    """Dense 16-bit tensor peak of a named CUDA device, or None when the table has no data-sheet figure for it."""
    for pattern, flops in PEAK_FLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return flops
    return None


_MEASURED_PEAKS = {}


def measure_matmul_flops(device="cpu", dtype=torch.float32, size=1024, repeats=10):
    """Measured matmul throughput of a device, the best achievable peak where no data sheet applies (CPUs)."""
    key = (str(device), dtype, size)
    if key not in _MEASURED_PEAKS:
        # its own generator: measuring must not move the global RNG, which drives dropout (an MFU figure taken
        # mid-run would otherwise make a resumed run's dropout masks differ from the uninterrupted run's)
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
        b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
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
