"""Tokenizing on Ray Data: prepare.py's work units -> map_batches(TokenizeUnits) on an actor pool -> batches
in input order, so the bytes written equal one process's."""

from __future__ import annotations

import os
import time

import ray

from ..config import PrepareConfig
from ..corpus import PrepareError
from ..prepare import TokenizeUnits
from ..prepare import prepare as prepare_here
from .session import connect, disconnect


def prepare(cfg: PrepareConfig) -> dict:
    """prepare.prepare with Ray Data as its parallel tokenizer (used when cfg.parallel says so)."""
    return prepare_here(cfg, parallel_batches=ray_batches)


def ray_batches(cfg: PrepareConfig, units: list[dict], job: dict):
    """Tokenized batches from Ray Data; joins or starts Ray, and shuts down what it started when closed."""
    # a local cluster needs no dashboard for this (seconds saved); the workers' logs would break our progress bar
    started = connect(cfg.address, include_dashboard=False, log_to_driver=False)
    try:
        batches = tokenized_ray(units, job, actor_pool_size(cfg.num_workers, len(units)))
        try:
            yield from batches
        finally:
            batches.close()  # Ray Data's iterator cleans up while Ray is still up
    finally:
        if started:
            disconnect()


def actor_pool_size(num_workers: int, units: int, wait_s: float = 15.0) -> int:
    """num_workers, or one tokenizer actor per CPU of the cluster, as far as CPUs are free. Ray Data waits forever
    for CPUs that other actors hold, so a cluster with none free is an error rather than a hang. CPUs held by
    the actors of a dataset that just finished come back within seconds: give them that long."""
    total = int(ray.cluster_resources().get("CPU", 0))
    wanted = max(1, min(units, num_workers or total))
    deadline = time.monotonic() + wait_s
    while (free := int(ray.available_resources().get("CPU", 0))) < min(wanted, total) and time.monotonic() < deadline:
        time.sleep(0.25)
    if free < 1:
        raise PrepareError(f"no free CPU on the Ray cluster ({total} CPUs, all held by other actors or tasks): "
                           "free some, or tokenize here with --parallel=False")
    return min(wanted, free) if not num_workers else wanted


def tokenized_ray(units: list[dict], job: dict, size: int):
    """The work on Ray Data: units -> map_batches(TokenizeUnits) on `size` actors -> batches in input order."""
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True  # output order = input order: bytes match one process
    context.enable_progress_bars = False  # ours counts units and tokens
    try:
        remote_args = {}
        if os.environ.get("TIKTOKEN_CACHE_DIR"):  # offline BPE ranks, for workers of a cluster started elsewhere
            remote_args["runtime_env"] = {"env_vars": {"TIKTOKEN_CACHE_DIR": os.environ["TIKTOKEN_CACHE_DIR"]}}
        # The units are tiny rows already in the object store; the tokenizer actors read their bytes
        # themselves. A separate read stage would need CPUs of its own, and with every CPU held by the actor
        # pool Ray Data would wait forever.
        dataset = ray.data.from_items(units, override_num_blocks=len(units))
        dataset = dataset.map_batches(TokenizeUnits, fn_constructor_args=(job,), batch_size=1, num_cpus=1,
                                      compute=ray.data.ActorPoolStrategy(size=size), **remote_args)
        yield from dataset.iter_batches(batch_size=None, prefetch_batches=1)  # streaming: bounded memory
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
