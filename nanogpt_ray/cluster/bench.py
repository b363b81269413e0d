"""Benchmarks on Ray: one actor per GPU (or node) all at once (`bench --cluster`), and the training loop under
TorchTrainer with 1..N workers on the same global batch (`bench --scaling`). The timing itself is pure (bench.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..bench import (
    BenchError,
    bench_config_dict,
    bench_data,
    check_worker_counts,
    flops_per_iter,
    format_bench_table,
    format_scaling_table,
    peak_flops_and_source,
    peak_memory,
    plan_bench_actors,
    run_bench,
    scaling_train_config,
    write_synthetic_dataset,
)
from ..config import PADDED_VOCAB_SIZE, BenchConfig, UserError, to_dict
from ..train_loop import train
from .session import DEFAULT_HEALTH_CHECK_INTERVAL_S, ray_session, wait_until_ready
from .train import RayRuntime, build_trainer, check_cluster

# ----------------------------------------------------------------------------- every node

@ray.remote  # resources are set per node with .options() below
class BenchActor:
    """Runs bench.run_bench in its own process, pinned to one node (and one GPU, when it has one)."""

    def __init__(self, num_threads: int = 0):
        if num_threads:
            import torch

            # Ray sets OMP_NUM_THREADS to the actor's 1 CPU; a node benchmark should use the whole node
            torch.set_num_threads(num_threads)

    def ready(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self, config: dict) -> dict:
        row = run_bench(config, verbose=False)
        node_id = ray.get_runtime_context().get_node_id()
        return dict(row, node=node_id, node_id=node_id, hostname=socket.gethostname())


def _actor_failure(e: Exception, plan: dict) -> Exception:
    """A user error raised inside an actor (unknown dataset, bad device) becomes one line naming the node."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, UserError):  # a dataset, device or config the user has to fix
        return BenchError(f"node {plan['node_id'][:12]} ({plan['hostname']}): {cause}")
    return e


def bench_cluster(cfg: BenchConfig, ready_timeout_s: float = 300.0) -> list[dict]:
    """bench.run_bench on every GPU (or every node), all at once; prints the table and names the slowest node."""
    with ray_session(cfg.address):
        plans = plan_bench_actors(ray.nodes(), cfg.device)
        actors = [
            BenchActor.options(  # pinned: soft=False never lets Ray move it to another node
                num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"],
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=plan["node_id"], soft=False),
            ).remote(plan["num_threads"])
            for plan in plans
        ]
        try:
            wait_until_ready(actors, ready_timeout_s, "their nodes' CPUs/GPUs are held by other work (benchmark actors)")
            print(f"benchmarking on {len(actors)} actor(s) over {len({p['node_id'] for p in plans})} node(s)...",
                  flush=True)
            refs = [a.run.remote(bench_config_dict(cfg, device=plan["device"])) for a, plan in zip(actors, plans)]
            rows = []
            for ref, plan in zip(refs, plans):
                try:
                    rows.append(ray.get(ref))
                except ray.exceptions.RayTaskError as e:
                    raise _actor_failure(e, plan) from None
        finally:
            for actor in actors:
                ray.kill(actor)  # free the CPUs/GPUs now, not when the driver exits
    print(format_bench_table(rows))
    return rows




# ----------------------------------------------------------------------------- worker scaling

class ScalingBenchRuntime(RayRuntime):
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

    def send(self, metrics: dict, checkpoint_dir: str | None) -> None:
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
        super().send(metrics, checkpoint_dir)


def scaling_worker(config: dict) -> None:
    """What each Ray Train worker runs: (synthetic data if asked), then the training loop, timed."""
    train_config = config["train"]
    if config["synthetic"]:
        write_synthetic_dataset(os.path.join(train_config["data_root"], train_config["dataset"]), seed=train_config["seed"])
    train(train_config, ScalingBenchRuntime(config["warmup_steps"], config["timed_steps"]))


# ----------------------------------------------------------------------------- driver

def run_scaling(cfg: BenchConfig, num_workers: int, work_dir: str) -> dict:
    """One TorchTrainer.fit() of the timed loop on num_workers workers; its row."""
    tcfg = scaling_train_config(cfg, num_workers, work_dir)
    tcfg, use_gpu = check_cluster(tcfg)  # one line when the cluster can never hold num_workers workers
    trainer = build_trainer(tcfg, use_gpu, worker_fn=scaling_worker,
                            loop_config={"train": to_dict(tcfg), "synthetic": not cfg.real_data,
                                         "warmup_steps": cfg.warmup_steps, "timed_steps": cfg.timed_steps})
    print(f"scaling: {num_workers} worker(s), {tcfg.tokens_per_iter():,} tokens per iteration "
          f"({tcfg.micro_steps_per_worker()} micro-steps of {cfg.batch_size} x {cfg.block_size} each)...", flush=True)
    result = trainer.fit()
    metrics = result.metrics or {}
    if "bench_ms_per_iter" not in metrics:
        raise RuntimeError(f"the scaling run with {num_workers} worker(s) reported no timings: {metrics}")
    dt = metrics["bench_ms_per_iter"] / 1000
    vocab_size = (bench_data(cfg)[1] if cfg.real_data else PADDED_VOCAB_SIZE)
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


def bench_scaling(cfg: BenchConfig) -> list[dict]:
    """Rows for 1..max_workers workers, with scaling efficiency against one worker; prints the table."""
    counts = check_worker_counts(cfg)
    if cfg.real_data:
        bench_data(cfg)  # a dataset that is not prepared fails here in one line, before any worker starts
    # each ray.train.report can wait this long for the controller (Ray's default is 2 s)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEFAULT_HEALTH_CHECK_INTERVAL_S)
    work_dir = tempfile.mkdtemp(prefix="nanogpt-ray-scaling-")
    try:
        with ray_session(cfg.address):
            rows = [run_scaling(cfg, n, work_dir) for n in counts]
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
        row["scaling_efficiency"] = row["tokens_per_s"] / (row["workers"] * base)
    print(format_scaling_table(rows))
    sys.stdout.flush()
    return rows


