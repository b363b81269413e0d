"""Where `nanogpt-ray train` runs the loop: in this process (Ray Train's local mode) or on Ray Train workers.

Pure: cluster/train.py hands in the environment and whether Ray is already connected. Local mode is
`ScalingConfig(num_workers=0)`: the loop runs in the current process with the same ray.train API and no
cluster (under torchrun, every rank is such a process and they train as one DDP group). It has no worker
restarts (rerun with --init_from=resume, as in nanoGPT) and copies no checkpoint to storage_path.

The plain command a nanoGPT user types runs in local mode; anything that names a cluster or asks for what
only Ray's workers do runs Ray Train workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import TrainConfig
from .preflight import LaunchError

RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the driver of a `ray job submit`


@dataclass(frozen=True)
class LaunchMode:
    local: bool
    """True: Ray Train's local mode in this process (or each torchrun rank); False: Ray Train workers."""
    why: str
    """What decided it, for the start line."""
    other: str
    """How to get the other mode, for the start line."""

    def start_line(self) -> str:
        where = "local mode (this process, no Ray cluster)" if self.local else "Ray Train workers"
        return f"{where}: {self.why}; {self.other}"


TO_RAY = "--num_workers=2 (or --address, --storage_path) runs Ray Train workers"
TO_LOCAL = "one worker with no cluster named and no storage_path runs in local mode (or pass --num_workers=0)"


def torchrun_world_size(environ) -> int:
    return int(environ.get("WORLD_SIZE", "1") or 1)


def choose_launch_mode(cfg: TrainConfig, environ, ray_connected: bool = False) -> LaunchMode:
    """Local mode when no cluster is named (no --address, no RAY_ADDRESS, not inside a Ray job, Ray not already
    connected in this process), one worker (or num_workers=0), not elastic and no explicit storage_path; always
    under torchrun (WORLD_SIZE > 1), where asking for Ray's workers is an error."""
    explicit_local = cfg.num_workers == 0
    if torchrun_world_size(environ) > 1 or explicit_local:
        asked = "torchrun" if torchrun_world_size(environ) > 1 else "num_workers=0"
        conflicts = [what for what, present in (
            ("--address", bool(cfg.address)), (f"num_workers={cfg.num_workers}", cfg.num_workers > 1),
            ("min_workers/max_workers", cfg.is_elastic()), ("--storage_path", bool(cfg.storage_path))) if present]
        if conflicts:
            raise LaunchError(f"{asked} runs in Ray Train's local mode, which does not use {', '.join(conflicts)}; "
                              f"drop {' and '.join(conflicts)}, or launch without {asked} to get Ray Train workers")
        return LaunchMode(True, f"{asked}", TO_RAY if asked == "num_workers=0" else "launch without torchrun for Ray Train workers")
    reasons = [why for why, present in (
        (f"--address={cfg.address}", bool(cfg.address)),
        (f"RAY_ADDRESS={environ.get('RAY_ADDRESS')}", bool(environ.get("RAY_ADDRESS"))),
        ("inside a Ray job", bool(environ.get(RAY_JOB_ENV))),
        ("Ray already connected in this process", ray_connected),
        (f"num_workers={cfg.num_workers}", cfg.num_workers > 1),
        (f"elastic min_workers={cfg.min_workers}, max_workers={cfg.max_workers}", cfg.is_elastic()),
        (f"storage_path={cfg.storage_path} (local mode copies no checkpoints there)", bool(cfg.storage_path)),
    ) if present]
    if reasons:
        return LaunchMode(False, ", ".join(reasons), TO_LOCAL)
    return LaunchMode(True, "one worker, no cluster named", TO_RAY)
