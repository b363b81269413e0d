"""Time training steps of a GPT: ms/iter, tokens/s, MFU and peak memory, after nanoGPT's bench.py.

    nanogpt-ray bench --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 --batch_size=12 --real_data=False

`run_bench(cfg)` is one process on one device and returns a result row (a plain dict). MFU is measured
against the right peak: the data-sheet bf16 peak of a known GPU, or on a CPU (or an unknown GPU) the
machine's own measured matmul peak, printed as such. `profile=True` wraps the timed steps in torch.profiler
and writes a TensorBoard trace. Pure: torch, numpy, model and data; the Ray modes (`--cluster`, `--scaling`)
live in cluster/bench.py and are only imported when asked for.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import tempfile
import time
import uuid
from contextlib import nullcontext

import numpy as np
import torch

from .config import PADDED_VOCAB_SIZE, BenchConfig, TrainConfig, UserError, from_dict, to_dict
from .data import check_block_size, check_token_ids, get_batch, load_split
from .device import (
    autocast_context,
    default_peak_flops,
    enable_tf32,
    measure_matmul_flops,
    peak_flops_for_device,
    resolve_device,
    resolve_dtype,
)
from .files import atomic_open, atomic_write_text
from .model import GPTConfig
from .modern import build_gpt
from .tokenizer import model_vocab_size, read_meta


class BenchError(UserError):
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
    """The training tokens (a memmap) and the vocabulary size train's model gets (tokenizer.model_vocab_size);
    (None, GPT-2's padded vocabulary) for random tokens."""
    if not cfg.real_data:
        return None, PADDED_VOCAB_SIZE
    dataset_dir = os.path.join(cfg.data_root, cfg.dataset)
    data = load_split(dataset_dir, "train")  # DataError naming `nanogpt-ray prepare <dataset>` when missing
    check_block_size(data, cfg.block_size, os.path.join(dataset_dir, "train.bin"))
    meta = read_meta(dataset_dir)
    vocab_size = model_vocab_size(meta)
    check_token_ids(data, vocab_size, os.path.join(dataset_dir, "train.bin"))
    return data, vocab_size


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
    model = build_gpt(GPTConfig(**cfg.model_args(), vocab_size=vocab_size)).to(device)
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
        if cfg.grad_clip:  # part of every training step, so the step timed here is the one the loop runs
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
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


def bench_config_dict(cfg: BenchConfig, **changes) -> dict:
    """The config as a plain dict for a Ray actor or worker, with the Ray-mode switches off."""
    return dict(to_dict(cfg), cluster=False, scaling=False, json="", **changes)


__all__ = ["BenchError", "run_bench", "write_json", "print_row", "bench_config_dict"]


# ----------------------------------------------------------------------------- every node (cluster/bench.py runs it)

def plan_bench_actors(nodes: list[dict], device: str) -> list[dict]:
    """One actor per GPU (GPU nodes only) or, on CPU-only clusters or with device='cpu', one per node.

    Each plan: node_id, hostname, num_cpus, num_gpus, num_threads, device.
    """
    alive = [n for n in nodes if n.get("Alive")]
    use_gpu = device not in ("cpu", "mps") and any(n.get("Resources", {}).get("GPU", 0) >= 1 for n in alive)
    if device.startswith("cuda") and not use_gpu:
        raise BenchError(f"device={device!r} but the Ray cluster has no GPUs; use --device=cpu or 'auto'")
    plans = []
    for node in sorted(alive, key=lambda n: n["NodeID"]):
        resources = node.get("Resources", {})
        cpus, gpus = resources.get("CPU", 0), int(resources.get("GPU", 0))
        base = dict(node_id=node["NodeID"], hostname=node.get("NodeManagerHostname", ""), num_cpus=min(1, cpus))
        if use_gpu:
            plans += [dict(base, num_gpus=1, num_threads=0, device="cuda") for _ in range(gpus)]
        elif cpus >= 1:
            plans.append(dict(base, num_gpus=0, num_threads=int(cpus), device=device if device != "auto" else "cpu"))
    if not plans:
        raise BenchError("the Ray cluster has no alive node with a CPU or GPU to benchmark on")
    return plans


def format_bench_table(rows: list[dict]) -> str:
    """node, device, ms/iter, tokens/s, MFU, memory; then the slowest node by tokens/s."""
    header = ("node", "host", "device", "ms/iter", "tokens/s", "MFU", "memory")
    lines = [[row["node"][:12], row.get("hostname", ""), row["device"], f"{row['ms_per_iter']:.2f}",
              f"{row['tokens_per_s']:,.0f}", f"{row['mfu'] * 100:.2f}%", format_bytes(row["peak_memory_bytes"])]
             for row in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]
    slowest = min(rows, key=lambda r: r["tokens_per_s"])
    fastest = max(rows, key=lambda r: r["tokens_per_s"])
    note = f" ({slowest['tokens_per_s'] / fastest['tokens_per_s']:.0%} of the fastest)" if len(rows) > 1 else ""
    out.append(f"slowest node: {slowest['node']} ({slowest.get('hostname', '')}, {slowest['device']}): "
               f"{slowest['tokens_per_s']:,.0f} tokens/s{note}")
    if rows and "memory_kind" in rows[0]:
        out.append(f"memory: {rows[0]['memory_kind']}; MFU against each actor's own peak: {rows[0]['peak_flops_source']}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- worker scaling (cluster/bench.py runs it)

SYNTHETIC_TOKENS = 1 << 20  # random tokens per split of the synthetic dataset (2 MiB as uint16)


def write_synthetic_dataset(dataset_dir: str, seed: int, vocab_size: int = PADDED_VOCAB_SIZE) -> None:
    """Random tokens in the prepared-dataset format, written on whichever node needs them (atomic renames)."""
    os.makedirs(dataset_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {f"{split}.bin": rng.integers(0, vocab_size, SYNTHETIC_TOKENS, dtype=np.uint16).tobytes()
             for split in ("train", "val")}
    files["meta.json"] = json.dumps({"vocab_size": vocab_size, "dtype": "uint16", "tokenizer": "synthetic"}).encode()
    for name, payload in files.items():
        path = os.path.join(dataset_dir, name)
        if os.path.exists(path):
            continue
        with atomic_open(path, "wb") as f:  # several workers may write the same file: each renames a whole one
            f.write(payload)


def scaling_train_config(cfg: BenchConfig, num_workers: int, work_dir: str) -> TrainConfig:
    """A TrainConfig that trains warmup + timed iterations (+1, whose timing the loop folds into its final eval),
    evaluates on one batch at the start and end, and checkpoints only at the end."""
    if cfg.real_data:
        data_root, dataset = os.path.abspath(cfg.data_root), cfg.dataset
    else:
        data_root, dataset = os.path.join(tempfile.gettempdir(), "nanogpt-ray-bench-data"), f"synthetic-{cfg.seed}"
    run_name = f"bench-scaling-{num_workers}-{uuid.uuid4().hex[:8]}"
    return TrainConfig(
        out_dir=os.path.join(work_dir, run_name), storage_path=os.path.join(work_dir, "ray"), run_name=run_name,
        eval_interval=10**9, eval_iters=1, log_interval=1, always_save_checkpoint=True,  # saves only at the end
        dataset=dataset, data_root=data_root, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        batch_size=cfg.batch_size, max_iters=cfg.warmup_steps + cfg.timed_steps + 1, decay_lr=False,
        device=cfg.device, dtype=cfg.dtype, compile=cfg.compile, seed=cfg.seed, num_workers=num_workers,
        max_failures=0, num_checkpoints_to_keep=1, address=cfg.address, **cfg.model_args(),
    )


def flops_per_iter(cfg: BenchConfig, vocab_size: int) -> float:
    """Training FLOPs of one global iteration, from a model built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = build_gpt(GPTConfig(**cfg.model_args(), vocab_size=vocab_size))
    return model.flops_per_token() * cfg.block_size * cfg.batch_size * cfg.gradient_accumulation_steps


def check_worker_counts(cfg: BenchConfig) -> list[int]:
    counts = list(range(1, cfg.max_workers + 1))
    bad = [n for n in counts if cfg.gradient_accumulation_steps % n != 0]
    if bad:
        lcm = math.lcm(*counts)
        raise BenchError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must divide by every worker "
                         f"count 1..{cfg.max_workers} (not by {bad[0]}) so each run trains the same global batch; "
                         f"use e.g. --gradient_accumulation_steps={lcm}")
    return counts


def format_scaling_table(rows: list[dict]) -> str:
    header = ("workers", "ms/iter", "tokens/s", "speedup", "efficiency", "MFU", "memory (rank 0)")
    lines = [[str(r["workers"]), f"{r['ms_per_iter']:.2f}", f"{r['tokens_per_s']:,.0f}", f"{r['speedup']:.2f}x",
              f"{r['scaling_efficiency']:.0%}", f"{r['mfu'] * 100:.2f}%", format_bytes(r["peak_memory_bytes"])]
             for r in rows]
    widths = [max(len(c) for c in column) for column in zip(header, *lines)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    first = rows[0]
    return "\n".join([f"same global batch: {first['tokens_per_iter']:,} tokens per iteration "
                      f"({first['gradient_accumulation_steps']} x {first['batch_size']} x {first['block_size']}), "
                      f"{first['device']}", fmt(header)] + [fmt(line) for line in lines]
                     + [f"MFU against {first['peak_flops_source']} per worker ({first['memory_kind']})"])
