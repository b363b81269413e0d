"""What a run must pass before any worker starts, and how its workers fit on the cluster. Pure: the Ray wing
(cluster/train.py, cluster/tune.py) hands in the cluster's nodes as plain dicts.

Everything a person can get wrong (missing dataset, a block larger than the data, GPUs the cluster does not
have, storage that cannot be written, a resume with nothing to resume, more workers than the cluster can
ever place) fails here in one line, before a single worker starts, instead of as a traceback on a worker
or a run that waits forever for resources.
"""

from __future__ import annotations

import dataclasses
import math
import os

from .checkpoint import CKPT_NAME
from .config import GPT2_PRESETS, GPT2_VOCAB_SIZE, TrainConfig, UserError
from .data import DataError, check_block_size, check_token_ids, load_split
from .hf import read_gpt2_config
from .storage import StorageError, check_readable, check_writable, is_uri, join, list_dir
from .tokenizer import model_vocab_size, read_meta


class LaunchError(UserError):
    """A run that cannot work as configured; one line that says what to change."""


# ----------------------------------------------------------------------------- checks that need no cluster

def expected_vocab_size(cfg: TrainConfig, meta: dict | None) -> int | None:
    """The vocab_size the run's model will have, where the driver can tell without loading weights:
    scratch (what train_loop builds: tokenizer.model_vocab_size) and GPT-2 (its config). None for resume: the
    worker checks."""
    if cfg.init_from == "scratch":
        return model_vocab_size(meta)
    if cfg.init_from in GPT2_PRESETS:
        return GPT2_VOCAB_SIZE
    if os.path.isdir(cfg.init_from):
        return read_gpt2_config(cfg.init_from)["vocab_size"]
    return None


def check_dataset(cfg: TrainConfig) -> None:
    if is_uri(cfg.dataset_dir()):  # the workers fetch it into their node's cache and check it there
        for split in ("train", "val"):
            check_readable(join(cfg.dataset_dir(), f"{split}.bin"), "data_root")
        return
    meta = read_meta(cfg.dataset_dir())  # a damaged meta.json fails here, not on every worker
    vocab_size = expected_vocab_size(cfg, meta)
    try:
        for split in ("train", "val"):
            data = load_split(cfg.dataset_dir(), split)
            check_block_size(data, cfg.block_size, os.path.join(cfg.dataset_dir(), f"{split}.bin"))
            if vocab_size is not None:
                check_token_ids(data, vocab_size, os.path.join(cfg.dataset_dir(), f"{split}.bin"))
    except DataError as e:
        raise LaunchError(str(e)) from None


def check_storage(cfg: TrainConfig, create: bool = True) -> None:
    """Write and delete a probe where checkpoints will be persisted (a folder, or an object under a URI);
    create=False (a dry run) creates no local folder."""
    try:
        check_writable(cfg.resolved_storage_path(), "storage_path", create=create)
    except StorageError as e:
        raise LaunchError(str(e)) from None


def run_dir(cfg: TrainConfig) -> str:
    return join(cfg.resolved_storage_path(), cfg.resolved_run_name())


def run_has_checkpoint(cfg: TrainConfig) -> bool:
    """Whether the run's storage holds a checkpoint already (then a rerun resumes it)."""
    try:
        return any(name.startswith("checkpoint_") for name in list_dir(run_dir(cfg)))
    except (StorageError, OSError):
        return False


def check_resume(cfg: TrainConfig) -> None:
    if cfg.init_from != "resume":
        return
    if os.path.exists(os.path.join(cfg.out_dir, CKPT_NAME)) or run_has_checkpoint(cfg):
        return
    raise LaunchError(f"init_from='resume' but there is no checkpoint in {os.path.join(cfg.out_dir, CKPT_NAME)} "
                      f"nor in {run_dir(cfg)}; train first, or point --out_dir at an earlier run")


def check_local(cfg: TrainConfig) -> None:
    """The checks that need no cluster."""
    check_dataset(cfg)
    check_storage(cfg)
    check_resume(cfg)


# ----------------------------------------------------------------------------- fitting workers on nodes

def worker_resources(cfg: TrainConfig, use_gpu: bool) -> dict:
    resources = {"CPU": cfg.cpus_per_worker, **cfg.resources_per_worker}
    if use_gpu:
        resources.setdefault("GPU", 1)
    return {k: v for k, v in resources.items() if v}


def resolve_use_gpu(cfg: TrainConfig, cluster_gpus: float) -> bool:
    if cfg.device.startswith("cuda") and cluster_gpus == 0:
        raise LaunchError(f"device={cfg.device!r} but the Ray cluster has no GPUs; pass --device=cpu (or 'auto'), "
                          "or join a cluster with GPUs via --address/RAY_ADDRESS")
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


def default_cpus_per_worker(nodes: list[dict], num_workers: int, strategy: str, use_gpu: bool) -> float:
    """cpus_per_worker=0: on CPU, the most whole CPUs every worker can get with all of them placed (the node's
    CPUs divided by the workers on it: 2 on a 2-CPU node for 1 worker, 1 each for 2), so a worker uses the
    machine as a plain `python train.py` would. GPU workers get 1: their CPU threads only feed the GPU."""
    if use_gpu:
        return 1.0
    most = int(max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=1))
    for cpus in range(most, 0, -1):
        if max_placeable_workers(nodes, {"CPU": cpus}, strategy) >= num_workers:
            return float(cpus)
    return 1.0  # not even one CPU each: check_placement says so in one line


def check_placement(cfg: TrainConfig, nodes: list[dict]) -> tuple[TrainConfig, bool]:
    """(cfg with cpus_per_worker decided, use_gpu); fails when the workers can never all be placed on these
    (alive) nodes."""
    use_gpu = resolve_use_gpu(cfg, sum(n.get("Resources", {}).get("GPU", 0) for n in nodes))
    # elastic runs must be able to start with min_workers; cpus_per_worker is sized for all max_workers
    num_workers = cfg.min_workers if cfg.is_elastic() else cfg.num_workers
    if not cfg.cpus_per_worker:
        cpus = default_cpus_per_worker(nodes, max(cfg.worker_counts()), cfg.placement_strategy, use_gpu)
        cfg = dataclasses.replace(cfg, cpus_per_worker=cpus)
    need = worker_resources(cfg, use_gpu)
    can_hold = max_placeable_workers(nodes, need, cfg.placement_strategy)
    if num_workers > can_hold:
        name = "min_workers" if cfg.is_elastic() else "num_workers"
        raise LaunchError(f"{name}={num_workers} but the Ray cluster ({len(nodes)} node(s)) can hold at most "
                          f"{can_hold} worker(s) needing {need} each with placement_strategy={cfg.placement_strategy}; "
                          "lower num_workers or cpus_per_worker, or add nodes")
    return cfg, use_gpu


# ---------------------------------------------------------------------------- ports

def check_port_free(host: str, port: int) -> None:
    """Fail in one line when host:port cannot be bound here: another program, or another `serve`, holds it.
    Bound without SO_REUSEPORT on purpose: Serve's proxy sets it, so a second Serve would otherwise share the
    port silently (the kernel splits connections between the two servers)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a just-stopped server's TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as e:
            holder = port_holder(port)
            held = f"held by {holder}" if holder else (e.strerror or str(e)).lower()
            raise LaunchError(f"port {port} on {host} is busy ({held}); stop that program or pass --port=N "
                              "with a free port") from None


def port_holder(port: int) -> str:
    """'pid N (command line)' of the process listening on TCP `port`, when this user may see it (Linux /proc); ''
    otherwise."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    if not inodes:
        return ""
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in targets for fd in fds):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {pid} ({' '.join(command.split())[:80]})"
        except OSError:
            continue
    return ""


def is_this_machine(address: str) -> bool:
    """Whether a Ray address ('' / 'local' / 'auto' / [ray://]host:port) is a cluster on this machine: its host is
    one of this machine's addresses (a socket binds to it)."""
    import socket

    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    if address in ("", "local", "auto") or not host:
        return True
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
        return True
    except OSError:
        return False
