"""The one way to start or join Ray: `with ray_session(address) as started: ...`.

Joins the cluster at --address (or RAY_ADDRESS), else starts a local one; fails in one line when nothing
listens at the address; shuts down only what it started.

Several Ray instances may run on one machine (a notebook's ray.init, a colleague's `ray start`, our own serve
beside our own tune). Ray components that find "their" cluster by themselves (Ray Train's placement-group
cleaner asks the State API with no address) then pick the wrong one or fail. So every worker process of the
cluster we start or join is told its own cluster's address (RAY_ADDRESS), and so are the driver's children.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import contextmanager

import ray

from ..config import UserError, first_line

# Set to 1 (or train --verbose=True) to keep Ray's worker and controller tracebacks of a run that ends with a
# UserError (see prepare_worker_process).
TRACEBACKS_ENV = "NANOGPT_RAY_TRACEBACKS"
# Environment variables the workers need from the driver (Ray only propagates its own).
WORKER_ENV_VARS = ("NANOGPT_RAY_T0", TRACEBACKS_ENV, "WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_ENTITY",
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


# What connect() sets in the driver's environment, and disconnect() puts back.
_SAVED_ENV: dict[str, str | None] = {}


def connect(address: str = "", *, env_vars: dict | None = None, include_dashboard: bool = False,
            log_to_driver: bool = True) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one. True if this call started Ray.

    env_vars travel to every task and actor of the job (a sweep's trial drivers build trainers in actors);
    include_dashboard applies to a local cluster only: off unless asked (its processes cost seconds of startup
    on a small machine), except for Tune, which needs it (without the State API, the placement groups of trials
    ASHA stops are never cleaned up and later trials wait for CPUs forever)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        check_reachable(address)
    runtime_env = {"env_vars": env_vars} if env_vars else {}
    # Ray, not ours: every worker process learns its own cluster's address before it runs anything
    runtime_env["worker_process_setup_hook"] = f"{__name__}.prepare_worker_process"
    kwargs = {}
    if address in ("", "local"):  # a cluster started here, for this command only
        # nothing preempts a machine's own cluster; Ray Train's watcher would be one more process (and its
        # ray.train import, ~2 s of CPU) to start before the first step, and ~1% of a core after
        _set_env("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"))
        # Ray turns token auth on for a new local cluster (kept: it generates the token) and warns about it at
        # every start. Setting RAY_AUTH_MODE=token ourselves would skip the token's generation (Ray reads the mode
        # once, at import) and the GCS would die for want of one; so keep Ray's default and only its warning quiet
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        kwargs["include_dashboard"] = include_dashboard
    try:
        # "local": always a new cluster. ray.init(address=None) would join the last `ray start` cluster on the
        # machine instead, one this command never asked for (and whose token-auth setting it does not share)
        ray.init(address=address or "local", log_to_driver=log_to_driver, runtime_env=runtime_env, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        _restore_env()
        raise ClusterError(f"could not join a Ray cluster at {address or 'a new local cluster'}: {first_line(e)}") from None
    joined = cluster_address() or address
    _set_env("RAY_ADDRESS", joined)  # the driver's child processes (and Ray calls made here) find this cluster
    if address not in ("", "local"):
        print(f"joined the Ray cluster at {joined}", file=sys.stderr)
    return True


def disconnect() -> None:
    """ray.shutdown(), and the driver's environment as it was before connect()."""
    ray.shutdown()
    _restore_env()


def cluster_address() -> str:
    """host:port of the GCS of the cluster this process is connected to ('' under Ray Client)."""
    try:
        return ray.get_runtime_context().gcs_address or ""
    except Exception:
        return ""


def _set_env(name: str, value: str) -> None:
    _SAVED_ENV.setdefault(name, os.environ.get(name))
    os.environ[name] = value


def _restore_env() -> None:
    for name, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _SAVED_ENV.clear()


def prepare_worker_process() -> None:
    """Runs first in every worker process of a cluster we start or join (runtime_env's setup hook).

    RAY_ADDRESS: Ray Train's placement-group cleaner (a detached actor) queries the State API with no address,
    which Ray resolves from RAY_ADDRESS, else by looking for Ray instances on the machine: with two it fails with
    a traceback, or picks the one `ray start` last recorded, which may be the other cluster (whose State API does
    not know our controller). Subprocesses of the worker inherit the address too.
    The cleaner's own warning: it asks the State API every second whether the controller lives, and on a
    cluster without the dashboard logs a warning each time, which reaches the person's terminal. Its job is moot
    there: the cluster, and every placement group in it, ends with the command."""
    address = cluster_address()
    if address:
        os.environ["RAY_ADDRESS"] = address
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    # Train's controller asks Ray's autoscaling coordinator for its workers' resources with a 5 s timeout; on busy
    # cores the coordinator's first answer can take longer, and Ray logs a harmless warning ("safe to ignore",
    # it retries) with a full traceback: keep its one line, drop the traceback
    logging.getLogger("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client").addFilter(
        _without_traceback)
    # a worker group that cannot be placed in time is a condition with a plain message, not a bug: the
    # controller's logs of it keep their message and lose the traceback (every other error keeps its own)
    for name in ("ray.train.v2._internal.execution.controller.controller",
                 "ray.train.v2._internal.execution.failure_handling.default"):
        logging.getLogger(name).addFilter(_startup_timeout_without_traceback)
    # a run that ends with one of our UserErrors (a diverged loss, bad data) ends in one line, printed by the
    # driver: the worker's and the controller's tracebacks of it say nothing more (TRACEBACKS_ENV brings them back)
    for name in ("ray.train.v2._internal.util", "ray.train.v2._internal.execution.controller.controller",
                 "ray.train.v2._internal.execution.failure_handling.default"):
        logging.getLogger(name).addFilter(_drop_user_error_logs)


def _drop_user_error_logs(record: logging.LogRecord) -> bool:
    """False (drop the record) when it logs one of our UserErrors, which the driver prints as one line."""
    if os.environ.get(TRACEBACKS_ENV):
        return True
    # Ray's "Error in training function" log carries the traceback as text, written inside the except block
    error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
    return user_error_in(error) is None


def user_error_in(error: BaseException | None) -> UserError | None:
    """The UserError inside a (Ray-wrapped) exception chain, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UserError):
            return error
        error = getattr(error, "cause", None) or getattr(error, "controller_failure", None) or error.__cause__
    return None


def _without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text = None, None
    return True


def _startup_timeout_without_traceback(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if "WorkerGroupStartupTimeoutError" in (type(error).__name__, type(getattr(error, "controller_failure", None)).__name__):
        _without_traceback(record)
    return True


def user_errors_in_one_line(record: logging.LogRecord) -> bool:
    """A logging filter for the driver: a log of an exception that is one of our one-line UserErrors (also when
    a Ray task raised it) keeps its message plus that line, without the traceback."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, UserError):
        line = str(getattr(error, "cause", None) or error).strip().splitlines()[-1]
        record.msg, record.args = f"{record.getMessage()}: {line}", ()
        _without_traceback(record)
    return True


def wait_until_ready(actors: list, timeout_s: float, why_not: str) -> list:
    """ray.get of every actor's ready(); an actor the cluster cannot place would wait forever, so after
    timeout_s that is one line: 'N of M actors could not start within T s: <why_not>'."""
    ready, pending = ray.wait([a.ready.remote() for a in actors], num_returns=len(actors), timeout=timeout_s)
    if pending:
        raise ClusterError(f"{len(pending)} of {len(actors)} actors could not start within {timeout_s:.0f} s: {why_not}")
    return ray.get(ready)


def nodes_for_plan(address: str = "") -> tuple[list[dict], str]:
    """For --dry_run: (alive nodes, which cluster) of the cluster a command would join (joined to ask, nothing
    started on it), or this machine's, standing for the local cluster the command would start (Ray not started)."""
    from ..plan import this_machine_nodes

    if ray.is_initialized():
        return [n for n in ray.nodes() if n.get("Alive")], "the Ray cluster this process is connected to"
    address = address or os.environ.get("RAY_ADDRESS", "")
    if not address or address == "local":
        return this_machine_nodes(), "a local Ray cluster this command would start"
    with ray_session(address):
        return [n for n in ray.nodes() if n.get("Alive")], f"the Ray cluster at {address}"


@contextmanager
def ray_session(address: str = "", **connect_kwargs):
    """connect(), and ray.shutdown() on the way out if this session started Ray."""
    started = connect(address, **connect_kwargs)
    try:
        yield started
    finally:
        if started:
            disconnect()
