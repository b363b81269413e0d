"""Ray actors that fan pure work out over the cluster: benchmarks on every node (bench.py).

The few Ray calls are marked `# [ray]`; the work itself lives in the pure modules.
"""

from __future__ import annotations

import os
import socket

import ray

from .bench import bench_config_dict, format_bytes, run_bench
from .config import BenchConfig


class ActorError(ValueError):
    """A cluster problem a person has to fix (no cluster at the address, nothing to run on); one line."""


# ---- benchmark actors

def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, fast, when nothing listens at host:port (ray.init would retry for a long while)."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # 'auto', 'local' or a form Ray itself judges
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ActorError(f"no Ray cluster reachable at {address} ({e.strerror or e}); start one there with "
                         "`ray start --head`, or fix --address (or RAY_ADDRESS)") from None


def connect(address: str) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one. True if we started Ray."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        _check_reachable(address)
    try:
        ray.init(address=address or None)  # [ray]
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ActorError(f"could not join a Ray cluster at {address or 'a new local cluster'}: {first_line}") from None
    return True


@ray.remote  # [ray] resources are set per node with .options() below
class BenchActor:
    """Runs bench.run_bench in its own process, pinned to one node (and one GPU, when it has one)."""

    def __init__(self, num_threads: int = 0):
        if num_threads:
            import torch

            # Ray sets OMP_NUM_THREADS to the actor's 1 CPU; a node benchmark should use the whole node
            torch.set_num_threads(num_threads)

    def ready(self) -> str:
        return ray.get_runtime_context().get_node_id()  # [ray]

    def run(self, config: dict) -> dict:
        row = run_bench(config, verbose=False)
        node_id = ray.get_runtime_context().get_node_id()  # [ray]
        return dict(row, node=node_id, node_id=node_id, hostname=socket.gethostname())


def plan_bench_actors(nodes: list[dict], device: str) -> list[dict]:
    """One actor per GPU (GPU nodes only) or, on CPU-only clusters or with device='cpu', one per node.

    Each plan: node_id, hostname, num_cpus, num_gpus, num_threads, device.
    """
    alive = [n for n in nodes if n.get("Alive")]
    use_gpu = device not in ("cpu", "mps") and any(n.get("Resources", {}).get("GPU", 0) >= 1 for n in alive)
    if device.startswith("cuda") and not use_gpu:
        raise ActorError(f"device={device!r} but the Ray cluster has no GPUs; use --device=cpu or 'auto'")
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
        raise ActorError("the Ray cluster has no alive node with a CPU or GPU to benchmark on")
    return plans


def _actor_failure(e: Exception, plan: dict) -> Exception:
    """A user error raised inside an actor (unknown dataset, bad device) becomes one line naming the node."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, ValueError):  # DataError, BenchError, ConfigError are ValueErrors
        return ActorError(f"node {plan['node_id'][:12]} ({plan['hostname']}): {cause}")
    return e


def bench_cluster(cfg: BenchConfig, ready_timeout_s: float = 300.0) -> list[dict]:
    """bench.run_bench on every GPU (or every node), all at once; prints the table and names the slowest node."""
    started = connect(cfg.address)
    try:
        plans = plan_bench_actors(ray.nodes(), cfg.device)  # [ray]
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # [ray]

        actors = [
            BenchActor.options(  # [ray] pinned: soft=False never lets Ray move it to another node
                num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"],
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=plan["node_id"], soft=False),
            ).remote(plan["num_threads"])
            for plan in plans
        ]
        try:
            # an actor the node cannot place (its CPUs or GPUs held by others) would wait forever
            ready, pending = ray.wait([a.ready.remote() for a in actors], num_returns=len(actors),
                                      timeout=ready_timeout_s)  # [ray]
            if pending:
                raise ActorError(f"{len(pending)} of {len(actors)} benchmark actors could not start within "
                                 f"{ready_timeout_s:.0f} s: their nodes' CPUs/GPUs are held by other work")
            print(f"benchmarking on {len(actors)} actor(s) over {len({p['node_id'] for p in plans})} node(s)...",
                  flush=True)
            refs = [a.run.remote(bench_config_dict(cfg, device=plan["device"])) for a, plan in zip(actors, plans)]
            rows = []
            for ref, plan in zip(refs, plans):
                try:
                    rows.append(ray.get(ref))  # [ray]
                except ray.exceptions.RayTaskError as e:
                    raise _actor_failure(e, plan) from None
        finally:
            for actor in actors:
                ray.kill(actor)  # [ray] free the CPUs/GPUs now, not when the driver exits
    finally:
        if started:
            ray.shutdown()
    print(format_bench_table(rows))
    return rows


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
        out.append(f"memory: {rows[0]['memory_kind']}; MFU against {rows[0]['peak_flops_source']} of each node")
    return "\n".join(out)

