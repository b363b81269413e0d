"""The one way to start or join Ray: `with ray_session(address) as started: ...`.

Joins the cluster at --address (or RAY_ADDRESS), else starts a local one; fails in one line when nothing
listens at the address; warns when a second Ray instance runs on this machine; shuts down only what it started.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import contextmanager

import ray

from ..config import UserError, first_line

# Environment variables the workers need from the driver (Ray only propagates its own).
WORKER_ENV_VARS = ("NANOGPT_RAY_INJECT_NAN_AT_ITER", "NANOGPT_RAY_T0", "WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_ENTITY",
                   "TIKTOKEN_CACHE_DIR", "HF_HUB_OFFLINE", "HF_HOME", "NANOGPT_RAY_GPT2_RANKS")
# How often the Train controller polls workers; each report can wait this long. Ray's default is 2 s.
DEFAULT_HEALTH_CHECK_INTERVAL_S = "0.5"


class ClusterError(UserError):
    """A cluster problem a person has to fix (nothing at the address, nothing to run on); one line."""


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, fast, when nothing listens at host:port (ray.init would retry for a long while)."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # 'auto', 'local' or a form Ray itself judges
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"no Ray cluster reachable at {address} ({e.strerror or e}); start one there with "
                           "`ray start --head`, or fix --address (or RAY_ADDRESS)") from None


def worker_env_vars(extra: tuple[str, ...] = ()) -> dict:
    """The driver's values of the variables workers need, for a runtime_env."""
    return {k: os.environ[k] for k in (*WORKER_ENV_VARS, *extra) if k in os.environ}


def connect(address: str = "", *, env_vars: dict | None = None, include_dashboard: bool | None = None,
            log_to_driver: bool = True) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one. True if this call started Ray.

    env_vars travel to every task and actor of the job (a sweep's trial drivers build trainers in actors);
    include_dashboard applies to a local cluster only (Tune needs it: without it stopped trials leak their
    placement groups)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        check_reachable(address)
    runtime_env, kwargs = {"env_vars": env_vars} if env_vars else {}, {}
    if address in ("", "local"):  # a cluster started here, for this command only
        # nothing preempts a machine's own cluster; Ray Train's watcher would be one more process (with its
        # own ray.train import) to start before the first step, and to keep polling after
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        if include_dashboard is not None:
            kwargs["include_dashboard"] = include_dashboard
        if include_dashboard is False:
            runtime_env["worker_process_setup_hook"] = f"{__name__}.quiet_placement_group_cleaner"
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    try:
        ray.init(address=address or None, log_to_driver=log_to_driver, **kwargs)  # None: a new local cluster
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        raise ClusterError(f"could not join a Ray cluster at {address or 'a new local cluster'}: {first_line(e)}") from None
    warn_about_other_ray_instances()
    return True


def quiet_placement_group_cleaner() -> None:
    """Runs in each worker process of a local cluster started without the dashboard. Ray Train's placement-group
    cleaner asks the State API (a dashboard service) every second whether the controller lives, and without it
    logs a warning each time, which reaches the person's terminal. Its job is moot there: the cluster, and every
    placement group in it, ends with this command."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def wait_until_ready(actors: list, timeout_s: float, why_not: str) -> list:
    """ray.get of every actor's ready(); an actor the cluster cannot place would wait forever, so after
    timeout_s that is one line: 'N of M actors could not start within T s: <why_not>'."""
    ready, pending = ray.wait([a.ready.remote() for a in actors], num_returns=len(actors), timeout=timeout_s)
    if pending:
        raise ClusterError(f"{len(pending)} of {len(actors)} actors could not start within {timeout_s:.0f} s: {why_not}")
    return ray.get(ready)


@contextmanager
def ray_session(address: str = "", **connect_kwargs):
    """connect(), and ray.shutdown() on the way out if this session started Ray."""
    started = connect(address, **connect_kwargs)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()


def warn_about_other_ray_instances() -> None:
    """Ray Train's placement-group cleaner finds its cluster by auto-detection, which fails when two Ray instances
    run on one machine: placement groups of finished runs (or sweep trials) then leak and later ones wait for
    CPUs forever. Say so once, at connect time."""
    try:
        from ray._private.services import find_gcs_addresses  # private, so only ever a warning

        others = sorted(set(find_gcs_addresses()) - {ray.get_runtime_context().gcs_address})
    except Exception:
        return
    if others:
        print(f"warning: another Ray instance runs on this machine ({', '.join(others)}); with two, Ray Train cannot "
              f"clean up finished runs and later ones may wait forever: pass --address={others[0]} to use it, or "
              "stop it", file=sys.stderr)
