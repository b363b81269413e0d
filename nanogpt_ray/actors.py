"""Ray actors that fan pure work out over the cluster: benchmarks on every node (bench.py), and batch
sampling of whole prompt files on actors or Ray Data (batch_sampling.py).

The few Ray calls are marked `# [ray]`; the work itself lives in the pure modules.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from typing import Iterator

import ray
from tqdm import tqdm

from .batch_sampling import (
    BatchSampleError,
    ResultWriter,
    SampleRow,
    done_keys,
    expand_rows,
    generate_batch,
    id_key,
    output_schema,
    plan_batches,
    read_prompts,
    result_row,
    rows_to_table,
    sample_rows,
    unique_ids,
)
from .bench import bench_config_dict, format_bytes, run_bench
from .config import BenchConfig, SampleConfig, from_dict, to_dict
from .sample import load_sampler


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
        out.append(f"memory: {rows[0]['memory_kind']}; MFU against each actor's own peak: {rows[0]['peak_flops_source']}")
    return "\n".join(out)


# ---- batch sampling
#
# `nanogpt-ray sample --prompts=FILE --output=FILE` and its Python API. The driver reads the prompts and
# plans batches (batch_sampling.plan_batches: deterministic, from the input order alone); SamplerActors,
# one per GPU or CPU slot, each load the model once and generate batch after batch with the KV cache.
# The driver keeps two batches in flight per actor, writes every finished batch at once, and re-submits
# the batches of an actor that died (to another actor where there is one). Rows keep their own seeds, so
# where a batch runs never changes what it generates.

MAX_BATCH_ATTEMPTS = 3  # a batch whose actor died this many times gets an error on each row instead
ACTOR_MAX_RESTARTS = 2  # Ray restarts a crashed sampler this often before it is given up
IN_FLIGHT_PER_ACTOR = 2  # the next batch waits on the actor while the driver writes the last one


@ray.remote(max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=0)  # [ray] the driver re-submits failed batches itself
class SamplerActor:
    """Loads the model and tokenizer once (sample.load_sampler), then turns planned batches into result rows."""

    def __init__(self, config: dict):
        self.init_error = None
        try:
            cfg = from_dict(SampleConfig, config)
            self.sampler = load_sampler(cfg)
            self.block_size = self.sampler.model.config.block_size
            self.truncate = cfg.truncate
            self.context_shift = cfg.context_shift  # see GPT.generate
        except ValueError as e:  # CheckpointError, SampleError, TokenizerError, ConfigError: the user's to fix
            self.init_error = str(e)

    def ready(self) -> dict:
        return {"pid": os.getpid(), "error": self.init_error, "node_id": ray.get_runtime_context().get_node_id()}  # [ray]

    def generate(self, batch: list[SampleRow]) -> list[dict]:
        model, tokenizer, device, ctx = self.sampler
        return generate_batch(model, tokenizer, batch, self.block_size, self.truncate, device, ctx, self.context_shift)


def _sampler_config(cfg: SampleConfig) -> dict:
    """The config as the actors get it: a plain dict with absolute paths (actors do not share our cwd)."""
    values = to_dict(cfg)
    for key in ("out_dir", "ckpt_path", "data_root"):
        if values[key]:
            values[key] = os.path.abspath(os.path.expanduser(values[key]))
    if values["init_from"] not in ("resume",) and os.path.isdir(os.path.expanduser(values["init_from"])):
        values["init_from"] = os.path.abspath(os.path.expanduser(values["init_from"]))
    return values


def plan_sampler_actors(cfg: SampleConfig, resources: dict) -> tuple[int, dict]:
    """(number of actors, options per actor) from the cluster's resources: one per GPU (or per
    gpus_per_actor) when there are GPUs and the device allows them, else one per CPU."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    use_gpu = cfg.gpus_per_actor > 0 or (gpus >= 1 and cfg.device == "auto") or cfg.device.startswith("cuda")
    if use_gpu:
        per_actor = cfg.gpus_per_actor or 1.0
        if gpus < per_actor:
            raise ActorError(f"the Ray cluster has {gpus:g} GPU(s), fewer than gpus_per_actor={per_actor:g}; "
                             "use --device=cpu or a cluster with GPUs")
        auto = int(gpus // per_actor)
        options = {"num_gpus": per_actor, "num_cpus": 0}
    else:
        auto = max(1, int(cpus))
        options = {"num_cpus": 1}
    return (cfg.num_actors or auto), options


def start_sampler_actors(cfg: SampleConfig, ready_timeout_s: float = 300.0) -> list:
    """Start the actors and wait until each has its model; a user error while loading is one line."""
    num_actors, options = plan_sampler_actors(cfg, ray.cluster_resources())  # [ray]
    config = _sampler_config(cfg)
    actors = [SamplerActor.options(**options).remote(config) for _ in range(num_actors)]  # [ray]
    try:
        ready, pending = ray.wait([a.ready.remote() for a in actors], num_returns=len(actors),
                                  timeout=ready_timeout_s)  # [ray]
        if pending:
            raise ActorError(f"{len(pending)} of {num_actors} sampling actors could not start within "
                             f"{ready_timeout_s:.0f} s: the cluster lacks {options} for each (use --num_actors)")
        for info in ray.get(ready):  # [ray]
            if info["error"]:
                raise ActorError(info["error"])
    except BaseException:
        stop_actors(actors)
        raise
    return actors


def stop_actors(actors: list) -> None:
    for actor in actors:
        ray.kill(actor)  # [ray] free the CPUs/GPUs now (Ray Data, next, needs them)


def run_batches(actors: list, batches: Iterator[list[SampleRow]], on_results) -> int:
    """Feed planned batches to the actors, IN_FLIGHT_PER_ACTOR each, and pass every finished batch's rows
    to on_results. A batch whose actor died goes back in the queue, to another actor where possible;
    after MAX_BATCH_ATTEMPTS deaths (or an error inside generate) its rows come back with an error.
    Returns how many batches were re-submitted after an actor died."""
    resubmitted = 0
    alive = set(range(len(actors)))
    deaths = [0] * len(actors)
    in_flight = [0] * len(actors)
    pending = {}  # ObjectRef -> (actor index, batch, attempts so far)
    retries = deque()  # (batch, attempts, actor index to avoid)
    batches = iter(batches)
    exhausted = False

    def next_batch(actor_index):
        nonlocal exhausted
        for position, (batch, attempts, avoid) in enumerate(retries):
            if avoid != actor_index or len(alive) == 1:
                del retries[position]
                return batch, attempts
        if exhausted:
            return None
        batch = next(batches, None)
        if batch is None:
            exhausted = True
            return None
        return batch, 0

    while True:
        for i in sorted(alive, key=lambda i: in_flight[i]):
            while in_flight[i] < IN_FLIGHT_PER_ACTOR:
                item = next_batch(i)
                if item is None:
                    break
                batch, attempts = item
                pending[actors[i].generate.remote(batch)] = (i, batch, attempts)  # [ray]
                in_flight[i] += 1
        if not pending:
            if retries or not exhausted:  # nothing in flight yet work left: every actor is gone
                raise ActorError(f"every sampling actor died ({len(actors)} started, each restarted up to "
                                 f"{ACTOR_MAX_RESTARTS} times) with rows left; rerun with --resume")
            return resubmitted
        [ref], _ = ray.wait(list(pending), num_returns=1)  # [ray]
        i, batch, attempts = pending.pop(ref)
        in_flight[i] -= 1
        try:
            results = ray.get(ref)  # [ray]
        except ray.exceptions.RayActorError:  # [ray] the actor process died (killed, OOM, node lost)
            deaths[i] += 1
            if deaths[i] > ACTOR_MAX_RESTARTS:  # Ray has no restart left for it: stop sending it work
                alive.discard(i)
            if attempts + 1 >= MAX_BATCH_ATTEMPTS:
                results = [result_row(r, error=f"sampling actor died {attempts + 1} times on this batch")
                           for r in batch]
            else:
                retries.append((batch, attempts + 1, i))
                resubmitted += 1
                continue
        except ray.exceptions.RayTaskError as e:  # [ray] generate raised: a bug or a device error; rows say so
            cause = getattr(e, "cause", None) or e
            message = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
            results = [result_row(r, error=f"generation failed: {type(cause).__name__}: {message}") for r in batch]
        on_results(results)


class _Progress:
    """tqdm over result rows, with generated tokens/s."""

    def __init__(self, total: int, disable: bool = False):
        self.bar = tqdm(total=total, unit="row", dynamic_ncols=True, disable=disable, file=sys.stderr)
        self.tokens = 0
        self.errors = 0
        self.start = time.perf_counter()

    def update(self, results: list[dict]) -> None:
        self.tokens += sum(r["tokens"] for r in results)
        self.errors += sum(r["error"] is not None for r in results)
        self.bar.update(len(results))
        self.bar.set_postfix_str(f"{self.tokens_per_s():,.0f} tokens/s, {self.errors} errors", refresh=False)

    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        self.bar.close()


def _as_records(prompts) -> list[dict]:
    """Records from strings (id = position from 1) or dicts (id defaults to the position)."""
    records = []
    for number, item in enumerate(prompts, start=1):
        if isinstance(item, str):
            records.append({"id": number, "prompt": item})
        elif isinstance(item, dict) and "prompt" in item:
            records.append({"id": number, **item})
        else:
            raise ActorError(f"prompt {number} must be a string or a dict with a 'prompt', not {type(item).__name__}")
    return records


def _checked(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except BatchSampleError as e:
        raise ActorError(str(e)) from None


def sample_prompts(prompts, cfg: SampleConfig | None = None, actors: list | None = None,
                   progress: bool = False) -> list[dict]:
    """The Python API: result rows (see batch_sampling.OUTPUT_COLUMNS) for prompts (strings, or dicts with
    'prompt' and optional 'id' and per-row settings), num_samples rows each, in input order.

        from nanogpt_ray.actors import sample_prompts
        rows = sample_prompts(["ROMEO:", "JULIET:"], SampleConfig(out_dir="out-shakespeare-char", num_samples=1))

    Starts Ray (cfg.address, or a local cluster) and the actors unless given `actors` to reuse."""
    cfg = cfg or SampleConfig()
    records = _checked(lambda: list(unique_ids(_as_records(prompts))))
    rows = list(expand_rows(records, cfg))
    order = {(id_key(r.id), r.sample): n for n, r in enumerate(rows)}
    results = []
    _sample(rows, cfg, results.extend, actors, progress)
    return sorted(results, key=lambda r: order[(id_key(r["id"]), r["sample"])])


def sample_file(cfg: SampleConfig, actors: list | None = None) -> dict:
    """`nanogpt-ray sample --prompts=FILE --output=FILE`: every prompt (and sample) of the file, results
    streamed to the output as batches finish. Returns a summary (rows, errors, tokens, seconds)."""
    if not cfg.output:
        raise ActorError("--prompts needs --output=FILE (.jsonl or .parquet) for the results")
    records = _checked(lambda: list(unique_ids(read_prompts(cfg.prompts))))
    done = _checked(done_keys, cfg.output) if cfg.resume else set()
    rows = [r for r in expand_rows(records, cfg) if (id_key(r.id), r.sample) not in done]
    if done:
        print(f"resume: {len(done)} rows already in {cfg.output}, {len(rows)} to go", file=sys.stderr)
    writer = _checked(ResultWriter, cfg.output, resume=cfg.resume)
    with writer:
        summary = _sample(rows, cfg, writer.write, actors, progress=True)
    print(f"wrote {summary['rows']} rows ({summary['errors']} with an error) to {cfg.output}: "
          f"{summary['tokens']:,} tokens in {summary['seconds']:.1f} s, {summary['tokens_per_s']:,.0f} tokens/s",
          file=sys.stderr)
    return summary


def _sample(rows: list[SampleRow], cfg: SampleConfig, sink, actors: list | None, progress: bool) -> dict:
    bar = _Progress(len(rows), disable=not progress)
    started = own_actors = False
    resubmitted = 0
    try:
        if rows:
            if actors is None:
                started = connect(cfg.address)
                actors, own_actors = start_sampler_actors(cfg), True

            def on_results(results):
                sink(results)
                bar.update(results)

            resubmitted = run_batches(actors, plan_batches(rows, cfg.batch_size), on_results)
    finally:
        bar.close()
        if own_actors:
            stop_actors(actors)
        if started:
            ray.shutdown()  # [ray]
    seconds = time.perf_counter() - bar.start
    return {"rows": len(rows), "errors": bar.errors, "tokens": bar.tokens, "seconds": seconds,
            "tokens_per_s": bar.tokens / max(seconds, 1e-9), "resubmitted_batches": resubmitted}


# ---- batch sampling on Ray Data (datasets too large to list on the driver)

class SampleBatchUDF:
    """map_batches UDF: each pool actor loads the model once and turns blocks of prompt rows (columns
    'id', 'prompt', optional settings) into result rows."""

    def __init__(self, config: dict):
        cfg = from_dict(SampleConfig, config)
        self.cfg = cfg
        self.sampler = load_sampler(cfg)

    def __call__(self, table):
        import pyarrow as pa

        records = table.to_pylist()
        if records and "id" not in records[0]:
            raise BatchSampleError("the dataset needs an 'id' column (rows cannot be numbered across blocks)")
        model, tokenizer, device, ctx = self.sampler
        results = list(sample_rows(model, tokenizer, expand_rows(records, self.cfg), model.config.block_size,
                                   self.cfg.batch_size, self.cfg.truncate, device, ctx,
                                   self.cfg.context_shift))
        int_ids = pa.types.is_integer(table.schema.field("id").type) if "id" in table.schema.names else True
        return rows_to_table(results, output_schema(results, int_ids=int_ids))


def sample_dataset(source, cfg: SampleConfig, output: str = ""):
    """Sample a Ray Dataset (or a parquet file/folder read lazily) with an actor pool of cfg.num_actors
    (auto: one per GPU, else CPUs - 1, leaving one for reading). Returns the lazy result Dataset; with
    `output` it is written there as parquet files (ds.write_parquet) instead."""
    import ray.data  # [ray]

    started = connect(cfg.address)
    try:
        ds = source if isinstance(source, ray.data.Dataset) else ray.data.read_parquet(source)  # [ray]
        num_actors, options = plan_sampler_actors(cfg, ray.cluster_resources())  # [ray]
        if not cfg.num_actors and "num_gpus" not in options:
            num_actors = max(1, num_actors - 1)  # an actor pool holding every CPU starves the read tasks
        results = ds.map_batches(  # [ray]
            SampleBatchUDF, fn_constructor_kwargs={"config": _sampler_config(cfg)},
            compute=ray.data.ActorPoolStrategy(size=num_actors), batch_size=cfg.batch_size * 4,
            batch_format="pyarrow", **options)
        if output:
            results.write_parquet(output)  # [ray]
            return output
        return results
    finally:
        if started and output:
            ray.shutdown()  # [ray]
