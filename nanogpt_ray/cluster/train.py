"""`nanogpt-ray train` on Ray Train: the Ray runtime the loop talks to, the one TorchTrainer builder (training,
sweeps and the scaling benchmark share it), and the driver that checks, launches and waits.

    from nanogpt_ray.config import TrainConfig, load_config
    from nanogpt_ray.cluster.train import train
    result = train(load_config(TrainConfig, ["configs/train_shakespeare_char_cpu.py"], ["--num_workers=2"]))
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer

from ..checkpoint import CKPT_NAME
from ..config import TrainConfig, UserError, from_dict, to_dict
from ..device import choose_device, resolve_device, resolve_dtype
from ..files import fsync_dir
from ..launch_mode import LaunchMode, choose_launch_mode, torchrun_world_size
from ..plan import describe_cluster, describe_resources, train_plan
from ..preflight import (
    LaunchError,
    check_dataset,
    check_local,
    check_placement,
    check_resume,
    check_storage,
    run_dir,
    run_has_checkpoint,
    worker_resources,
)
from ..storage import is_uri
from ..train_loop import PROCESS_T0, STARTUP_T0_ENV, Runtime, mark_startup, train
from .session import (
    DEFAULT_HEALTH_CHECK_INTERVAL_S,
    TRACEBACKS_ENV,
    nodes_for_plan,
    ray_session,
    user_error_in,
    worker_env_vars,
)

# Ray Train V2 routes workers' print() through its logger (each of our log lines then reached the console
# twice) and logs every report at INFO; a training log should read like nanoGPT's. Set either to 1 to undo.
QUIET_WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0"}
# Local mode logs that it runs (the start line says so) and every report at INFO, each as a line of its own
QUIET_LOCAL_MODE_LOGGERS = ("ray.train.v2.api.config", "ray.train.v2._internal.execution.train_fn_utils")


# ----------------------------------------------------------------------------- inside each worker

class RayRuntime(Runtime):
    """The loop's runtime inside a Ray Train worker: reports and checkpoints go to Ray Train.

    local_run_dir: the run's folder in storage when storage is a local (or mounted) path; checkpoints then
    reach it as hard links to the file the loop wrote, not as copies. report_interval: which metrics-only
    reports (the log lines) reach Ray (TrainConfig.report_interval)."""

    def __init__(self, local_run_dir: str | None = None, report_interval: int = 0):
        super().__init__()
        self.local_run_dir, self.report_interval = local_run_dir, report_interval
        context = ray.train.get_context()
        self.world_size = context.get_world_size()
        self.rank = context.get_world_rank()
        self.local_rank = context.get_local_rank()

    def device(self, requested: str) -> str:
        """The GPU Ray assigned to this worker when it has one (also for an explicit 'cuda'), else the CPU."""
        # Ray Train may show a node's workers all of its GPUs (for NCCL); get_device() knows which is ours
        assigned = ray.train.torch.get_device()
        index = assigned.index if assigned.type == "cuda" else None
        return choose_device(requested, self.local_rank, index, torch.cuda.device_count())

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def restored_checkpoint_dir(self) -> str | None:
        checkpoint = ray.train.get_checkpoint()  # set when Ray restarts the group or resumes the run
        return materialize(checkpoint) if checkpoint is not None else None

    def cpu_threads(self, cpus_per_worker: float) -> int:
        # Ray sets OMP_NUM_THREADS to the worker's CPUs, but torch may already have sized its pool: be explicit
        threads = max(1, round(cpus_per_worker))  # 1.99 (2 CPUs less a trial driver's 0.01) is 2 threads
        torch.set_num_threads(threads)
        return threads

    def send(self, metrics: dict, checkpoint_dir: str | None) -> None:
        # Each ray.train.report is a barrier that waits for the Train controller's next poll (~0.1 s measured):
        # at every log line that cost nanoGPT's quick start ~27 s of its ~60. Log lines stay in the worker's
        # output; Ray gets evals, checkpoints and every report_interval-th iteration. The rule depends on the
        # iteration alone, so every rank skips the same reports.
        if checkpoint_dir is None and "val_loss" not in metrics and not (
                self.report_interval and int(metrics.get("iter", 0)) % self.report_interval == 0):
            return
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        upload = self.link_into_storage if checkpoint and self.local_run_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_fn=upload)  # a barrier: every rank reports

    def link_into_storage(self, checkpoint, checkpoint_dir_name: str):
        """Ray's upload for local storage: hard links (no bytes copied); a copy across filesystems."""
        destination = os.path.join(self.local_run_dir, checkpoint_dir_name)
        os.makedirs(destination, exist_ok=True)
        for name in os.listdir(checkpoint.path):
            source, target = os.path.join(checkpoint.path, name), os.path.join(destination, name)
            try:
                os.link(source, target)
            except OSError:  # another filesystem, or one without hard links
                shutil.copy2(source, target)
        fsync_dir(destination)
        return ray.train.Checkpoint.from_directory(destination)

    def latest_checkpoint_dir(self, out_dir: str) -> str | None:
        # blocks until every report so far is committed, so all ranks see the same latest checkpoint
        reported = ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        if reported:
            latest = max(reported, key=lambda r: r.metrics.get("iter", -1))
            return materialize(latest.checkpoint)
        return self.restored_checkpoint_dir()

    def wait_committed(self) -> None:
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def materialize(checkpoint) -> str:
    """A local directory holding the checkpoint's files (downloaded when storage is remote)."""
    local = checkpoint.path if checkpoint.filesystem.type_name == "local" else None
    if local and os.path.isdir(local):
        return local
    return checkpoint.to_directory(tempfile.mkdtemp(prefix="nanogpt-ckpt-"))


def train_loop_per_worker(config: dict, runtime_class: type[RayRuntime] = RayRuntime) -> None:
    """What TorchTrainer runs on every worker. Returns nothing: Ray pickles a return value back to the
    controller, so results travel through reports only. Tests pass a runtime_class that injects faults."""
    cfg = from_dict(TrainConfig, config)
    train(config, runtime_class(None if is_uri(run_dir(cfg)) else run_dir(cfg), cfg.report_interval))


class LocalModeRuntime(Runtime):
    """The loop's runtime in Ray Train's local mode: this process, or each rank of torchrun (Ray has set up the
    process group by now). Everything but the reports is the plain runtime's: torch's default threads, this
    host's name (ray.get_runtime_context() would start a cluster), rollbacks from out_dir/ckpt.pt (local mode
    keeps no checkpoints of its own: get_all_reported_checkpoints is empty there)."""

    def send(self, metrics: dict, checkpoint_dir: str | None) -> None:
        # the run's result is the last report; reporting the checkpoint would hand back a temporary folder the
        # loop has already renamed into out_dir/ckpt.pt, the only copy local mode keeps
        if "val_loss" in metrics:
            ray.train.report(metrics)


def train_loop_local(config: dict, runtime_class: type[LocalModeRuntime] = LocalModeRuntime) -> None:
    """What TorchTrainer runs in local mode (ScalingConfig(num_workers=0)), in this process."""
    train(config, runtime_class())


# ----------------------------------------------------------------------------- the driver

class StopOnUserError(UserCallback):
    """Ray Train retries any worker exception up to max_failures. Bad input (a config, dataset, device or
    checkpoint error) and a diverged run (non-finite loss after every rollback) fail the same way on every
    retry, so end the run at the first one and keep the restart budget for crashes (a killed worker, a lost
    node). Runs on the Train controller: an exception raised here stops it, and controller errors are
    not retried."""

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        for rank in sorted(worker_exceptions):
            error = user_error_in(worker_exceptions[rank])
            if error is not None:
                raise RunStopped(f"{error}")


class RunStopped(UserError):
    """A worker's UserError, carried out of Ray Train without a retry."""


def check_cluster(cfg: TrainConfig) -> tuple[TrainConfig, bool]:
    """(cfg with cpus_per_worker decided, use_gpu); fails when the workers can never all be placed on the
    cluster's alive nodes."""
    return check_placement(cfg, [n for n in ray.nodes() if n.get("Alive")])


def scaling_config(cfg: TrainConfig, use_gpu: bool, resources: dict) -> ScalingConfig:
    """A fixed num_workers, or Ray Train's elastic (min, max) range: on a lost node the group restarts smaller
    from the latest checkpoint; when nodes return, it grows back (checked every elastic_resize_interval_s)."""
    elastic = dict(num_workers=(cfg.min_workers, cfg.max_workers),  # <- Ray: elastic worker group
                   elastic_resize_monitor_interval_s=cfg.elastic_resize_interval_s)
    return ScalingConfig(**(elastic if cfg.is_elastic() else dict(num_workers=cfg.num_workers)), use_gpu=use_gpu,
                         resources_per_worker=resources, placement_strategy=cfg.placement_strategy)


def build_local_trainer(cfg: TrainConfig, worker_fn=train_loop_local) -> TorchTrainer:
    """Ray Train's local mode: the same TorchTrainer API, run in this process with no cluster (under torchrun,
    Ray initialises the process group from torchrun's environment: gloo on CPU, NCCL with GPUs)."""
    return TorchTrainer(worker_fn, train_loop_config=to_dict(cfg),
                        scaling_config=ScalingConfig(num_workers=0),  # <- Ray: local mode
                        run_config=RunConfig(name=cfg.resolved_run_name()))


def build_trainer(cfg: TrainConfig, use_gpu: bool, callbacks: list | None = None, worker_fn=train_loop_per_worker,
                  loop_config: dict | None = None, startup_retries: int = -1) -> TorchTrainer:
    """The run's TorchTrainer on Ray Train workers. `callbacks` are Ray Train UserCallbacks (the sweep passes
    TuneReportCallback); the scaling benchmark passes its own worker_fn and loop_config. startup_retries: how many
    more times a worker group that could not start within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S is tried (-1: until
    it starts, as Ray does, for clusters whose nodes are still coming)."""
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_gpu else "gloo")
    env_vars = dict(QUIET_WORKER_ENV)
    env_vars.update(worker_env_vars(tuple(QUIET_WORKER_ENV)))
    resources = {k: v for k, v in {"CPU": cfg.cpus_per_worker, **cfg.resources_per_worker}.items() if v}
    return TorchTrainer(
        worker_fn,
        train_loop_config=loop_config or to_dict(cfg),  # a plain dict; the worker's first line makes it a TrainConfig
        torch_config=TorchConfig(backend=backend),
        scaling_config=scaling_config(cfg, use_gpu, resources),
        run_config=RunConfig(
            name=cfg.resolved_run_name(),  # deterministic: rerunning the same out_dir resumes the run
            storage_path=cfg.resolved_storage_path(),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=cfg.max_failures,  # restart the group from the latest checkpoint
                                         controller_failure_limit=startup_retries),
            worker_runtime_env={"env_vars": env_vars},
            callbacks=[StopOnUserError(), *(callbacks or [])],
        ),
    )


def launch(cfg: TrainConfig, runtime_class: type | None = None):
    """Check, launch, wait; returns the ray.train.Result (metrics of the last report; under Ray workers the
    latest checkpoint too). Local mode or Ray Train workers as launch_mode.choose_launch_mode decides; tests
    pass a runtime_class (a LocalModeRuntime or RayRuntime subclass) that injects faults."""
    os.environ.setdefault(STARTUP_T0_ENV, str(PROCESS_T0))  # the workers' --verbose clock starts with the command
    if cfg.verbose:
        os.environ.setdefault(TRACEBACKS_ENV, "1")
    mark_startup(cfg, Runtime(), "driver imported")
    mode = choose_launch_mode(cfg, os.environ, ray_connected=ray.is_initialized())
    if cfg.dry_run:
        return dry_run(cfg, mode)
    if mode.local:
        return launch_local(cfg, mode, runtime_class)
    check_local(cfg)
    # the Train controller reads this from the driver's environment (and passes it on to the workers)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEFAULT_HEALTH_CHECK_INTERVAL_S)
    with ray_session(cfg.address, include_dashboard=cfg.dashboard):
        mark_startup(cfg, Runtime(), "Ray up (checks done)")
        cfg, use_gpu = check_cluster(cfg)
        workers = f"{cfg.min_workers}..{cfg.max_workers} (elastic)" if cfg.is_elastic() else cfg.num_workers
        print(mode.start_line(), flush=True)
        print(f"tokens per iteration: {cfg.tokens_per_iter():,} on {workers} worker(s) "
              f"({'GPU' if use_gpu else f'CPU, {cfg.cpus_per_worker:g} each'}); run {cfg.resolved_run_name()!r} "
              f"in {cfg.resolved_storage_path()}", flush=True)
        if cfg.init_from != "resume" and run_has_checkpoint(cfg):
            print(f"note: run {run_dir(cfg)} already has checkpoints, so Ray resumes it; pass a new --out_dir or "
                  "--run_name for a fresh run", file=sys.stderr, flush=True)
        worker_fn = functools.partial(train_loop_per_worker, runtime_class=runtime_class) if runtime_class else train_loop_per_worker
        try:
            result = build_trainer(cfg, use_gpu, worker_fn=worker_fn).fit()
        except Exception as e:
            error = user_error_in(e)
            if error is not None:  # one line for the person, with the original chain kept for debugging
                raise LaunchError(str(error).strip().splitlines()[-1]) from e
            raise
        if result.checkpoint is not None:
            print(f"latest checkpoint: {result.checkpoint.path} (and {os.path.join(cfg.out_dir, CKPT_NAME)})", flush=True)
        return result


def dry_run(cfg: TrainConfig, mode: LaunchMode) -> None:
    """--dry_run: the checks either mode makes before its first worker (data, resume, storage, device, whether
    the workers fit), then the plan; no Ray cluster is started and nothing is trained."""
    check_dataset(cfg)
    check_resume(cfg)
    if mode.local:
        device = resolve_device(cfg.device)  # what the loop will pick: a GPU asked for and absent fails here
        world = torchrun_world_size(os.environ)
        workers = "this process" if world == 1 else f"{world} torchrun processes (DDP over them)"
        device_line = f"{device}, {resolve_dtype(cfg.dtype, device)}"
    else:
        check_storage(cfg, create=False)
        nodes, where = nodes_for_plan(cfg.address)
        cfg, use_gpu = check_placement(cfg, nodes)
        count = f"{cfg.min_workers}..{cfg.max_workers} (elastic)" if cfg.is_elastic() else str(cfg.num_workers)
        workers = f"{count} x ({describe_resources(worker_resources(cfg, use_gpu))}) on {describe_cluster(nodes, where)}"
        gpu_dtype = cfg.dtype if cfg.dtype != "auto" else "bfloat16 where the GPU has it, else float16"
        device_line = f"cuda (one GPU per worker), {gpu_dtype}" if use_gpu else f"cpu, {resolve_dtype(cfg.dtype, 'cpu')}"
    print(train_plan(cfg, mode.local, mode.start_line(), workers, device_line), flush=True)


def launch_local(cfg: TrainConfig, mode: LaunchMode, runtime_class: type | None = None):
    """Ray Train's local mode: no ray.init, no controller, no worker actors; out_dir/ckpt.pt is the checkpoint.
    Under torchrun every rank runs this."""
    check_dataset(cfg)
    check_resume(cfg)
    for name in QUIET_LOCAL_MODE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    first_rank = int(os.environ.get("RANK", "0")) == 0
    if first_rank:
        print(mode.start_line(), flush=True)
        ckpt_path = os.path.join(cfg.out_dir, CKPT_NAME)
        if cfg.init_from != "resume" and os.path.exists(ckpt_path):
            print(f"note: {ckpt_path} exists and this run starts from {cfg.init_from}, replacing it at its first "
                  "checkpoint; pass --init_from=resume to continue it", file=sys.stderr, flush=True)
    worker_fn = functools.partial(train_loop_local, runtime_class=runtime_class) if runtime_class else train_loop_local
    result = build_local_trainer(cfg, worker_fn).fit()
    if first_rank and os.path.exists(os.path.join(cfg.out_dir, CKPT_NAME)):
        print(f"latest checkpoint: {os.path.join(cfg.out_dir, CKPT_NAME)}", flush=True)
    return result
