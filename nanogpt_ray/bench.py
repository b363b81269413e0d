"""Time training steps of a GPT: ms/iter, tokens/s, MFU and peak memory, after nanoGPT's bench.py.

    nanogpt-ray bench --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 --batch_size=12 --real_data=False

`run_bench(cfg)` is one process on one device and returns a result row (a plain dict). MFU is measured
against the right peak: the data-sheet bf16 peak of a known GPU, or on a CPU (or an unknown GPU) the
machine's own measured matmul peak, printed as such. `profile=True` wraps the timed steps in torch.profiler
and writes a TensorBoard trace. Pure: torch, numpy, model and data; the Ray modes (`--cluster`, `--scaling`)
live in actors.py and scaling.py and are only imported when asked for.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import nullcontext

import torch

from .config import BenchConfig, from_dict, to_dict
from .data import check_block_size, get_batch, load_split
from .device import autocast_context, enable_tf32, resolve_device, resolve_dtype
from .files import atomic_write_text
from .model import GPT, GPTConfig, default_peak_flops, measure_matmul_flops, peak_flops_for_device
from .tokenizer import read_meta

DEFAULT_VOCAB_SIZE = 50304  # GPT-2's 50257 padded to a multiple of 64, as nanoGPT's bench uses


class BenchError(ValueError):
    """A benchmark that cannot run as configured; one line that says what to change."""


# ----------------------------------------------------------------------------- pieces

def bench_device(cfg: BenchConfig) -> tuple[str, str]:
    """(device, dtype) this process will really use; a device it does not have is a one-line error."""
    try:
        device = resolve_device(cfg.device)
    except ValueError as e:
        raise BenchError(str(e)) from None
    if device.startswith("cuda") and ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise BenchError(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    dtype = resolve_dtype(cfg.dtype, device)
    if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise BenchError(f"dtype='bfloat16' is not supported by {torch.cuda.get_device_name(device)}; use float16")
    return device, dtype


def device_name(device: str) -> str:
    """What a person calls the device: 'NVIDIA H100 80GB HBM3' or 'cpu (16 threads)'."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{device} ({torch.get_num_threads()} threads)"


def peak_flops_and_source(device: str) -> tuple[float, str]:
    """The FLOP/s MFU divides by, and where it came from (a data sheet or a measurement on this machine)."""
    if device.startswith("cuda") and peak_flops_for_device(torch.cuda.get_device_name(device)) is not None:
        return default_peak_flops(device), "data-sheet bf16 peak"
    if device.startswith("cuda"):
        return default_peak_flops(device), "measured bf16 matmul peak (GPU not in the data-sheet table)"
    # best of 50 rather than default_peak_flops' 10: on a shared CPU a few slow runs must not lower the peak;
    # the result is cached under the same key, so default_peak_flops returns this very measurement
    measure_matmul_flops("cpu", torch.float32, size=1024, repeats=50)
    return default_peak_flops(device), "measured fp32 matmul peak of this CPU (1024x1024, best of 50)"


def peak_memory(device: str) -> tuple[int, str]:
    """Peak memory in bytes and what was measured."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes
    return int(rss if sys.platform == "darwin" else rss * 1024), "process peak RSS"


def bench_data(cfg: BenchConfig):
    """The training tokens (a memmap) and the vocabulary size; (None, 50304) for random tokens."""
    if not cfg.real_data:
        return None, DEFAULT_VOCAB_SIZE
    dataset_dir = os.path.join(cfg.data_root, cfg.dataset)
    data = load_split(dataset_dir, "train")  # DataError naming `nanogpt-ray prepare <dataset>` when missing
    check_block_size(data, cfg.block_size, os.path.join(dataset_dir, "train.bin"))
    meta = read_meta(dataset_dir)
    return data, (meta or {}).get("vocab_size") or DEFAULT_VOCAB_SIZE


def format_flops(flops: float) -> str:
    for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
        if flops >= scale:
            return f"{flops / scale:.1f} {unit}"
    return f"{flops:.0f} FLOP/s"


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ----------------------------------------------------------------------------- the benchmark

def run_bench(cfg: BenchConfig | dict, verbose: bool = True) -> dict:
    """Train warmup_steps untimed, then timed_steps timed; returns the result row.

    The row: node (hostname), device, dtype, ms_per_iter, tokens_per_s, mfu, peak_flops (+ its source),
    peak_memory_bytes (+ what was measured), params, batch_size, block_size, loss, and profile_dir when profiling.
    """
    if isinstance(cfg, dict):
        cfg = from_dict(BenchConfig, cfg)
    say = print if verbose else (lambda *a, **k: None)
    device, dtype = bench_device(cfg)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cuda":
        if ":" in device:
            torch.cuda.set_device(device)
        enable_tf32()
    ctx = autocast_context(device, dtype)
    torch.manual_seed(cfg.seed)

    # ------------------------------------------------------------------ data
    data, vocab_size = bench_data(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    if data is None:
        # like nanoGPT's bench: one fixed random batch, so the data loader costs nothing
        x = torch.randint(vocab_size, (cfg.batch_size, cfg.block_size), generator=generator).to(device)
        y = torch.randint(vocab_size, (cfg.batch_size, cfg.block_size), generator=generator).to(device)
        get_xy = lambda: (x, y)
    else:
        get_xy = lambda: get_batch(data, cfg.batch_size, cfg.block_size, generator, device)

    # ------------------------------------------------------------------ model, optimizer
    model = GPT(GPTConfig(**cfg.model_args(), vocab_size=vocab_size)).to(device)
    optimizer = model.configure_optimizers(weight_decay=1e-2, learning_rate=1e-4, betas=(0.9, 0.95),
                                           device_type=device_type)
    raw_model = model
    if cfg.compile:
        say("compiling the model... (takes a ~minute)", flush=True)
        model = torch.compile(model)
    # measured before the steps (once per process), so the measurement never competes with them
    peak_flops, peak_source = peak_flops_and_source(device)

    def step() -> torch.Tensor:
        X, Y = get_xy()
        with ctx:
            _, loss = model(X, Y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if device_type == "cuda":
            torch.cuda.synchronize()

    # ------------------------------------------------------------------ warm-up (untimed: compile, allocator, caches)
    for _ in range(cfg.warmup_steps):
        step()
    sync()
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # ------------------------------------------------------------------ timed steps (optionally under the profiler)
    profiler = nullcontext()
    if cfg.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device_type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        os.makedirs(cfg.profile_dir, exist_ok=True)
        # the first timed step warms the profiler up; the rest are recorded into one trace
        profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=0, warmup=1 if cfg.timed_steps > 1 else 0,
                                             active=max(1, cfg.timed_steps - 1), repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(cfg.profile_dir),
            record_shapes=True, with_stack=False, profile_memory=False,
        )
    with profiler:
        t0 = time.perf_counter()
        for _ in range(cfg.timed_steps):
            loss = step()
            if cfg.profile:
                profiler.step()
        loss = loss.item()  # waits for the device, like sync()
        sync()
        dt = (time.perf_counter() - t0) / cfg.timed_steps

    # ------------------------------------------------------------------ results
    tokens_per_iter = cfg.batch_size * cfg.block_size
    mfu = raw_model.estimate_mfu(cfg.batch_size, dt, peak_flops=peak_flops)
    memory_bytes, memory_kind = peak_memory(device)
    row = {
        "node": socket.gethostname(),
        "hostname": socket.gethostname(),
        "device": device_name(device),
        "dtype": dtype,
        "ms_per_iter": dt * 1000,
        "tokens_per_s": tokens_per_iter / dt,
        "mfu": mfu,
        "peak_flops": peak_flops,
        "peak_flops_source": peak_source,
        "peak_memory_bytes": memory_bytes,
        "memory_kind": memory_kind,
        "params": raw_model.get_num_params(),
        "batch_size": cfg.batch_size,
        "block_size": cfg.block_size,
        "timed_steps": cfg.timed_steps,
        "compile": cfg.compile,
        "real_data": cfg.real_data,
        "loss": loss,
    }
    if cfg.profile:
        row["profile_dir"] = os.path.abspath(cfg.profile_dir)
    if verbose:
        print_row(row)
    return row


def print_row(row: dict) -> None:
    print(f"{row['params'] / 1e6:.2f}M parameters, batch {row['batch_size']} x block {row['block_size']}, "
          f"{row['dtype']} on {row['device']} ({row['node']})")
    print(f"MFU peak: {format_flops(row['peak_flops'])}, {row['peak_flops_source']}")
    print(f"ms/iter: {row['ms_per_iter']:.2f} | tokens/s: {row['tokens_per_s']:,.0f} | MFU: {row['mfu'] * 100:.2f}% | "
          f"peak memory: {format_bytes(row['peak_memory_bytes'])} ({row['memory_kind']}) | loss {row['loss']:.4f}")
    if row["mfu"] > 1:
        print("note: MFU above 100% means the measured peak is too low: the CPU was busier while it was measured "
              "than during the steps (other processes?); rerun on a quiet machine")
    if "profile_dir" in row:
        print(f"profiler trace written to {row['profile_dir']} (the timings above include the profiler's overhead); "
              f"view it with: tensorboard --logdir {row['profile_dir']}")


# ----------------------------------------------------------------------------- the command

def write_json(path: str, rows: list[dict]) -> None:
    """The rows as a JSON list of objects, written to a temporary name and renamed into place."""
    atomic_write_text(path, json.dumps(rows, indent=2) + "\n")
    print(f"wrote {len(rows)} row(s) to {path}")


def bench_main(cfg: BenchConfig) -> int:
    """`nanogpt-ray bench`: one process here, one actor per GPU/node (--cluster), or worker scaling (--scaling)."""
    if cfg.cluster and cfg.scaling:
        raise BenchError("pass either --cluster=True (every node) or --scaling=True (1..max_workers workers), not both")
    if cfg.cluster:
        from .actors import bench_cluster  # Ray enters only here

        rows = bench_cluster(cfg)
    elif cfg.scaling:
        from .scaling import bench_scaling  # Ray enters only here

        rows = bench_scaling(cfg)
    else:
        rows = [run_bench(cfg)]
    if cfg.json:
        write_json(cfg.json, rows)
    return 0


def bench_config_dict(cfg: BenchConfig, **changes) -> dict:
    """The config as a plain dict for a Ray actor or worker, with the Ray-mode switches off."""
    return dict(to_dict(cfg), cluster=False, scaling=False, json="", **changes)


__all__ = ["BenchError", "bench_main", "run_bench", "write_json", "print_row", "bench_config_dict"]
