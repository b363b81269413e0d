"""`nanogpt-ray bench --scaling=True`: the real training loop under TorchTrainer with 1, 2, ... N workers.

Every run trains the same global batch (gradient_accumulation_steps is global, as in nanoGPT, and split over
the workers), so tokens/s compare directly: perfect scaling is N times the one-worker tokens/s, and the
scaling efficiency is tokens/s(N) / (N * tokens/s(1)).

The loop is train_loop.train_loop_per_worker, unchanged. It reports ms/iter at every log_interval; here a
`ScalingBenchReporter` (a RayReporter) keeps those per-iteration timings on the worker instead of sending
them, and attaches the timed summary to the loop's final report, the one that carries the end checkpoint,
which is what the Ray Train Result hands back as `result.metrics`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import uuid

import numpy as np

from .bench import DEFAULT_VOCAB_SIZE, BenchError, bench_data, format_bytes, peak_flops_and_source, peak_memory
from .config import BenchConfig, TrainConfig, to_dict
from .files import atomic_open
from .launch import DEFAULT_HEALTH_CHECK_INTERVAL_S, check_cluster, worker_resources
from .train_loop import RayReporter, train_loop_per_worker

SYNTHETIC_TOKENS = 1 << 20  # random tokens per split of the synthetic dataset (2 MiB as uint16)


# ----------------------------------------------------------------------------- inside each worker

class ScalingBenchReporter(RayReporter):
    """Keeps the loop's per-iteration timings on the worker and adds their summary to the final report.

    Swallowing a report is safe only because every rank swallows the same ones (reports are a barrier)."""

    def __init__(self, warmup_steps: int, timed_steps: int):
        super().__init__()
        self.warmup_steps, self.timed_steps = warmup_steps, timed_steps
        self.ms_per_iter: dict[int, float] = {}
        self.device_str = "cpu"

    def device(self, requested: str) -> str:
        self.device_str = super().device(requested)
        return self.device_str

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        if "ms_per_iter" in metrics and "val_loss" not in metrics:  # a log report: keep the timing here
            self.ms_per_iter[int(metrics["iter"])] = float(metrics["ms_per_iter"])
            return
        timed = [ms for it, ms in self.ms_per_iter.items()
                 if self.warmup_steps < it <= self.warmup_steps + self.timed_steps]
        if len(timed) == self.timed_steps:
            peak_flops, peak_source = peak_flops_and_source(self.device_str)
            memory_bytes, memory_kind = peak_memory(self.device_str)
            metrics = dict(metrics, bench_ms_per_iter=sum(timed) / len(timed), bench_peak_flops=peak_flops,
                           bench_peak_flops_source=peak_source, bench_peak_memory_bytes=memory_bytes,
                           bench_memory_kind=memory_kind, bench_device=self.device_str)
        super().report(metrics, checkpoint_dir)


def write_synthetic_dataset(dataset_dir: str, seed: int, vocab_size: int = DEFAULT_VOCAB_SIZE) -> None:
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


def scaling_worker(config: dict) -> None:
    """What each Ray Train worker runs: (synthetic data if asked), then the training loop, timed."""
    train = config["train"]
    if config["synthetic"]:
        write_synthetic_dataset(os.path.join(train["data_root"], train["dataset"]), seed=train["seed"])
    train_loop_per_worker(train, ScalingBenchReporter(config["warmup_steps"], config["timed_steps"]))


# ----------------------------------------------------------------------------- driver

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
        max_failures=0, address=cfg.address, **cfg.model_args(),
    )


def flops_per_iter(cfg: BenchConfig, vocab_size: int) -> float:
    """Training FLOPs of one global iteration, from a model built on the meta device (no memory, no init cost)."""
    import torch

    from .model import GPT, GPTConfig

    with torch.device("meta"):
        model = GPT(GPTConfig(**cfg.model_args(), vocab_size=vocab_size))
    return model.flops_per_token() * cfg.block_size * cfg.batch_size * cfg.gradient_accumulation_steps


def run_scaling(cfg: BenchConfig, num_workers: int, work_dir: str) -> dict:
    """One TorchTrainer.fit() of the timed loop on num_workers workers; its row."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # [ray]
    from ray.train.torch import TorchConfig, TorchTrainer  # [ray]

    tcfg = scaling_train_config(cfg, num_workers, work_dir)
    use_gpu = check_cluster(tcfg)  # one line when the cluster can never hold num_workers workers
    resources = worker_resources(tcfg, use_gpu)
    resources.pop("GPU", None)
    trainer = TorchTrainer(
        scaling_worker,
        train_loop_config={"train": to_dict(tcfg), "synthetic": not cfg.real_data,
                           "warmup_steps": cfg.warmup_steps, "timed_steps": cfg.timed_steps},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=tcfg.run_name, storage_path=tcfg.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=0)),
    )
    print(f"scaling: {num_workers} worker(s), {tcfg.tokens_per_iter():,} tokens per iteration "
          f"({tcfg.micro_steps_per_worker()} micro-steps of {cfg.batch_size} x {cfg.block_size} each)...", flush=True)
    result = trainer.fit()  # [ray]
    metrics = result.metrics or {}
    if "bench_ms_per_iter" not in metrics:
        raise RuntimeError(f"the scaling run with {num_workers} worker(s) reported no timings: {metrics}")
    dt = metrics["bench_ms_per_iter"] / 1000
    vocab_size = (bench_data(cfg)[1] if cfg.real_data else DEFAULT_VOCAB_SIZE)
    return {
        "node": metrics.get("node_id", ""),
        "nodes": metrics.get("node_ids", []),
        "device": metrics["bench_device"],
        "workers": num_workers,
        "ms_per_iter": dt * 1000,
        "tokens_per_s": tcfg.tokens_per_iter() / dt,
        # achieved FLOP/s over the peak of all the workers' devices (rank 0's peak, times N)
        "mfu": flops_per_iter(cfg, vocab_size) / dt / (num_workers * metrics["bench_peak_flops"]),
        "peak_flops": metrics["bench_peak_flops"],
        "peak_flops_source": metrics["bench_peak_flops_source"],
        "peak_memory_bytes": metrics["bench_peak_memory_bytes"],
        "memory_kind": f"{metrics['bench_memory_kind']} of rank 0",
        "tokens_per_iter": tcfg.tokens_per_iter(),
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "batch_size": cfg.batch_size,
        "block_size": cfg.block_size,
        "timed_steps": cfg.timed_steps,
        "loss": metrics.get("train_loss"),
    }


def check_worker_counts(cfg: BenchConfig) -> list[int]:
    counts = list(range(1, cfg.max_workers + 1))
    bad = [n for n in counts if cfg.gradient_accumulation_steps % n != 0]
    if bad:
        lcm = math.lcm(*counts)
        raise BenchError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must divide by every worker "
                         f"count 1..{cfg.max_workers} (not by {bad[0]}) so each run trains the same global batch; "
                         f"use e.g. --gradient_accumulation_steps={lcm}")
    return counts


def bench_scaling(cfg: BenchConfig) -> list[dict]:
    """Rows for 1..max_workers workers, with scaling efficiency against one worker; prints the table."""
    counts = check_worker_counts(cfg)
    if cfg.real_data:
        bench_data(cfg)  # a dataset that is not prepared fails here in one line, before any worker starts
    import ray  # [ray]

    from .actors import connect

    # each ray.train.report can wait this long for the controller (Ray's default is 2 s)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEFAULT_HEALTH_CHECK_INTERVAL_S)
    started = connect(cfg.address)
    work_dir = tempfile.mkdtemp(prefix="nanogpt-ray-scaling-")
    try:
        rows = [run_scaling(cfg, n, work_dir) for n in counts]
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        if started:
            ray.shutdown()
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
        row["scaling_efficiency"] = row["tokens_per_s"] / (row["workers"] * base)
    print(format_scaling_table(rows))
    sys.stdout.flush()
    return rows


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
