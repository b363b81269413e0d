"""Driver side of `nanogpt-ray train`: check the run can work, build the TorchTrainer, run it.

    from nanogpt_ray.config import TrainConfig, load_config
    from nanogpt_ray.launch import train
    result = train(load_config(TrainConfig, ["configs/train_shakespeare_char_cpu.py"], ["--num_workers=2"]))

Everything a person can get wrong (missing dataset, a block larger than the data, GPUs the cluster does not
have, storage that cannot be written, a resume with nothing to resume, more workers than the cluster can
ever place) fails here in one line, before a single worker starts, instead of as a traceback on a worker
or a run that waits forever for resources.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import uuid

from .checkpoint import CKPT_NAME
from .config import TrainConfig, to_dict
from .data import DataError, check_block_size, load_split

# Environment variables the workers need from the driver (Ray only propagates its own).
WORKER_ENV_VARS = ("NANOGPT_RAY_INJECT_NAN_AT_ITER", "WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_ENTITY",
                   "TIKTOKEN_CACHE_DIR", "HF_HUB_OFFLINE", "HF_HOME", "NANOGPT_RAY_GPT2_RANKS")
# Ray Train V2 routes workers' print() through its logger (each of our log lines then reached the console
# twice) and logs every report at INFO; a training log should read like nanoGPT's. Set either to 1 to undo.
QUIET_WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0"}
# How often the Train controller polls workers; each report can wait this long. Ray's default is 2 s.
DEFAULT_HEALTH_CHECK_INTERVAL_S = "0.5"


class LaunchError(RuntimeError):
    """A run that cannot work as configured; one line that says what to change."""


# ----------------------------------------------------------------------------- checks before Ray

def is_uri(path: str) -> bool:
    return "://" in path


def check_dataset(cfg: TrainConfig) -> None:
    try:
        for split in ("train", "val"):
            data = load_split(cfg.dataset_dir(), split)
            check_block_size(data, cfg.block_size, os.path.join(cfg.dataset_dir(), f"{split}.bin"))
    except DataError as e:
        raise LaunchError(str(e)) from None


def check_storage(cfg: TrainConfig) -> None:
    """Write and delete a probe file where Ray will persist checkpoints."""
    storage = cfg.resolved_storage_path()
    try:
        if is_uri(storage):
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(storage)
            probe = f"{path.rstrip('/')}/.nanogpt-write-probe-{uuid.uuid4().hex[:8]}"
            fs.create_dir(path, recursive=True)
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
            fs.delete_file(probe)
        else:
            os.makedirs(storage, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=storage, prefix=".nanogpt-write-probe-"):
                pass
    except Exception as e:
        raise LaunchError(f"storage_path={storage!r} is not writable ({type(e).__name__}: {e}); "
                          "pass --storage_path=<a writable shared folder or s3:// URI>") from None


def run_dir(cfg: TrainConfig) -> str:
    return os.path.join(cfg.resolved_storage_path(), cfg.resolved_run_name())


def ray_run_has_checkpoint(cfg: TrainConfig) -> bool:
    directory = run_dir(cfg)
    if is_uri(directory):
        try:
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(directory)
            infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
            return any(os.path.basename(i.path).startswith("checkpoint_") for i in infos)
        except Exception:
            return False
    return os.path.isdir(directory) and any(name.startswith("checkpoint_") for name in os.listdir(directory))


def check_resume(cfg: TrainConfig) -> None:
    if cfg.init_from != "resume":
        return
    if os.path.exists(os.path.join(cfg.out_dir, CKPT_NAME)) or ray_run_has_checkpoint(cfg):
        return
    raise LaunchError(f"init_from='resume' but there is no checkpoint in {os.path.join(cfg.out_dir, CKPT_NAME)} "
                      f"nor in {run_dir(cfg)}; train first, or point --out_dir at an earlier run")


def check_local(cfg: TrainConfig) -> None:
    """The checks that need no cluster."""
    if cfg.gradient_accumulation_steps % cfg.num_workers != 0:  # TrainConfig checks this too; kept for dicts
        raise LaunchError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must divide by "
                          f"num_workers={cfg.num_workers}")
    check_dataset(cfg)
    check_storage(cfg)
    check_resume(cfg)


# ----------------------------------------------------------------------------- checks against the cluster

def worker_resources(cfg: TrainConfig, use_gpu: bool) -> dict:
    resources = {"CPU": cfg.cpus_per_worker, **cfg.resources_per_worker}
    if use_gpu:
        resources.setdefault("GPU", 1)
    return {k: v for k, v in resources.items() if v}


def resolve_use_gpu(cfg: TrainConfig, cluster_gpus: float) -> bool:
    if cfg.use_gpu is None:
        return cluster_gpus > 0 and cfg.device not in ("cpu", "mps")
    if cfg.use_gpu and cluster_gpus == 0:
        raise LaunchError("use_gpu=True but the Ray cluster has no GPUs; pass --use_gpu=False (or leave it unset), "
                          "or join a cluster with GPUs via --address/RAY_ADDRESS")
    return cfg.use_gpu


def max_placeable_workers(nodes: list[dict], need: dict, strategy: str) -> int:
    """How many workers the cluster's alive nodes can hold at once, whatever else runs on them."""
    per_node = []
    for node in nodes:
        capacity = node.get("Resources", {})
        fits = min((math.floor(capacity.get(k, 0) / v + 1e-9) for k, v in need.items()), default=0)
        per_node.append(max(0, fits))
    if not per_node:
        return 0
    if strategy == "STRICT_SPREAD":
        return sum(1 for n in per_node if n > 0)
    if strategy == "STRICT_PACK":
        return max(per_node)
    return sum(per_node)


def check_cluster(cfg: TrainConfig) -> bool:
    """Returns use_gpu; fails when the workers can never all be placed."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    use_gpu = resolve_use_gpu(cfg, sum(n.get("Resources", {}).get("GPU", 0) for n in nodes))
    need = worker_resources(cfg, use_gpu)
    can_hold = max_placeable_workers(nodes, need, cfg.placement_strategy)
    if cfg.num_workers > can_hold:
        raise LaunchError(f"num_workers={cfg.num_workers} but the Ray cluster ({len(nodes)} node(s)) can hold at most "
                          f"{can_hold} worker(s) needing {need} each with placement_strategy={cfg.placement_strategy}; "
                          "lower num_workers or cpus_per_worker, or add nodes")
    return use_gpu


# ----------------------------------------------------------------------------- the trainer

def build_trainer(cfg: TrainConfig, use_gpu: bool, callbacks: list | None = None):
    """The run's TorchTrainer; `callbacks` are Ray Train UserCallbacks (the sweep passes TuneReportCallback)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # [ray]
    from ray.train.torch import TorchConfig, TorchTrainer  # [ray]

    from .train_loop import train_loop_per_worker

    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_gpu else "gloo")
    env_vars = dict(QUIET_WORKER_ENV)
    env_vars.update({k: os.environ[k] for k in (*WORKER_ENV_VARS, *QUIET_WORKER_ENV) if k in os.environ})
    resources = worker_resources(cfg, use_gpu)
    resources.pop("GPU", None)  # use_gpu asks for the GPU
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=to_dict(cfg),  # a plain dict; the worker's first line makes it a TrainConfig again
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources,
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(
            name=cfg.resolved_run_name(),  # deterministic: rerunning the same out_dir resumes the run
            storage_path=cfg.resolved_storage_path(),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=cfg.max_failures),  # restart the group from the latest checkpoint
            worker_runtime_env={"env_vars": env_vars},
            callbacks=callbacks or None,
        ),
    )


def connect(cfg: TrainConfig) -> bool:
    """Join the cluster named by --address or RAY_ADDRESS, else start a local one. True if we started Ray."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=cfg.address or None)  # None: RAY_ADDRESS if set, else a new local cluster
    warn_about_other_ray_instances()
    return True


def warn_about_other_ray_instances() -> None:
    """Ray Train's placement-group cleaner finds its cluster by auto-detection, which fails when two Ray instances
    run on one machine: placement groups of finished runs (or sweep trials) then leak and later ones wait for
    CPUs forever. Say so once, at connect time."""
    import ray

    try:
        from ray._private.services import find_gcs_addresses  # private, so only ever a warning

        others = sorted(set(find_gcs_addresses()) - {ray.get_runtime_context().gcs_address})
    except Exception:
        return
    if others:
        print(f"warning: another Ray instance runs on this machine ({', '.join(others)}); with two, Ray Train cannot "
              f"clean up finished runs and later ones may wait forever: pass --address={others[0]} to use it, or "
              "stop it", file=sys.stderr)


def train(cfg: TrainConfig):
    """Check, launch, wait; returns the ray.train.Result (metrics of the last report, latest checkpoint)."""
    check_local(cfg)
    # the Train controller reads this from the driver's environment (and passes it on to the workers)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEFAULT_HEALTH_CHECK_INTERVAL_S)
    started = connect(cfg)
    try:
        use_gpu = check_cluster(cfg)
        print(f"tokens per iteration: {cfg.tokens_per_iter():,} on {cfg.num_workers} worker(s) "
              f"({'GPU' if use_gpu else 'CPU'}); run {cfg.resolved_run_name()!r} in {cfg.resolved_storage_path()}",
              flush=True)
        if cfg.init_from != "resume" and ray_run_has_checkpoint(cfg):
            print(f"note: run {run_dir(cfg)} already has checkpoints, so Ray resumes it; pass a new --out_dir or "
                  "--run_name for a fresh run", file=sys.stderr, flush=True)
        trainer = build_trainer(cfg, use_gpu)
        try:
            result = trainer.fit()
        except Exception as e:
            if "NonFiniteLossError" in f"{type(e).__name__} {e}" or "NonFiniteLossError" in repr(getattr(e, "__cause__", "")):
                raise LaunchError(_non_finite_message(e)) from None
            raise
        if result.checkpoint is not None:
            print(f"latest checkpoint: {result.checkpoint.path} (and {os.path.join(cfg.out_dir, CKPT_NAME)})", flush=True)
        return result
    finally:
        if started:
            import ray

            ray.shutdown()


def _non_finite_message(error: BaseException) -> str:
    text = str(error)
    for line in text.splitlines()[::-1]:
        if "NonFiniteLossError" in line:
            return line.split("NonFiniteLossError:", 1)[-1].strip()
    return text.splitlines()[0] if text else "loss is not finite"
