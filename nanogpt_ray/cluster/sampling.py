"""Batch sampling on Ray: `nanogpt-ray sample --prompts=FILE --output=FILE` and its Python API.

The driver reads the prompts and plans batches (batch_sampling.plan_batches: deterministic, from the input
order alone); SamplerActors, one per GPU or CPU slot, each load the model once and generate batch after
batch with the KV cache. The driver keeps two batches in flight per actor, writes every finished batch at
once, and re-submits the batches of an actor that died (batch_sampling.BatchDispatcher decides where). Rows
keep their own seeds, so where a batch runs never changes what it generates.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Iterator

import ray
from tqdm import tqdm

from ..batch_sampling import (
    BatchDispatcher,
    BatchSampleError,
    ResultWriter,
    SampleRow,
    done_keys,
    expand_rows,
    generate_batch,
    id_key,
    output_schema,
    plan_batches,
    read_batch_prompts,
    require_output,
    result_row,
    rows_to_table,
    sample_rows,
    unique_ids,
)
from ..config import SampleConfig, UserError, first_line, from_dict, to_dict
from ..sample import load_sampler
from ..storage import is_uri, local_input, staged_output
from .session import ClusterError, connect, disconnect, ray_session, wait_until_ready

MAX_BATCH_ATTEMPTS = 3  # a batch whose actor died this many times gets an error on each row instead
ACTOR_MAX_RESTARTS = 2  # Ray restarts a crashed sampler this often before it is given up
IN_FLIGHT_PER_ACTOR = 2  # the next batch waits on the actor while the driver writes the last one


@ray.remote(max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=0)  # the driver re-submits failed batches itself
class SamplerActor:
    """Loads the model and tokenizer once (sample.load_sampler), then turns planned batches into result rows."""

    def __init__(self, config: dict):
        self.init_error = None
        try:
            cfg = from_dict(SampleConfig, config)
            self.sampler = load_sampler(cfg)
            self.block_size = self.sampler.model.config.block_size
            self.truncate = cfg.truncate
            self.context_shift = cfg.context_shift  # see engine.generate
        except UserError as e:  # a checkpoint, tokenizer or config the user has to fix
            self.init_error = str(e)

    def ready(self) -> dict:
        return {"pid": os.getpid(), "error": self.init_error, "node_id": ray.get_runtime_context().get_node_id()}

    def generate(self, batch: list[SampleRow]) -> list[dict]:
        model, tokenizer, device, ctx = self.sampler
        return generate_batch(model, tokenizer, batch, self.block_size, self.truncate, device, ctx, self.context_shift)


def _sampler_config(cfg: SampleConfig) -> dict:
    """The config as the actors get it: a plain dict with absolute paths (actors do not share our cwd)."""
    values = to_dict(cfg)
    for key in ("out_dir", "ckpt_path", "data_root"):
        if values[key] and not is_uri(values[key]):
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
            raise ClusterError(f"the Ray cluster has {gpus:g} GPU(s), fewer than gpus_per_actor={per_actor:g}; "
                             "use --device=cpu or a cluster with GPUs")
        auto = int(gpus // per_actor)
        options = {"num_gpus": per_actor, "num_cpus": 0}
    else:
        auto = max(1, int(cpus))
        options = {"num_cpus": 1}
    return (cfg.num_actors or auto), options


def start_sampler_actors(cfg: SampleConfig, ready_timeout_s: float = 300.0) -> list:
    """Start the actors and wait until each has its model; a user error while loading is one line."""
    num_actors, options = plan_sampler_actors(cfg, ray.cluster_resources())
    config = _sampler_config(cfg)
    actors = [SamplerActor.options(**options).remote(config) for _ in range(num_actors)]
    try:
        for info in wait_until_ready(actors, ready_timeout_s,
                                     f"the cluster lacks {options} for each sampling actor (use --num_actors)"):
            if info["error"]:
                raise ClusterError(info["error"])
    except BaseException:
        stop_actors(actors)
        raise
    return actors


def stop_actors(actors: list) -> None:
    for actor in actors:
        ray.kill(actor)  # free the CPUs/GPUs now (Ray Data, next, needs them)


def run_batches(actors: list, batches: Iterator[list[SampleRow]], on_results) -> int:
    """Feed planned batches to the actors and pass every finished batch's rows to on_results; where each batch
    goes and what a death means is BatchDispatcher's call. Returns how many batches were re-submitted."""
    plan = BatchDispatcher(len(actors), batches, IN_FLIGHT_PER_ACTOR, MAX_BATCH_ATTEMPTS, ACTOR_MAX_RESTARTS)
    pending = {}  # ObjectRef -> (actor, batch, attempts so far, actor incarnation)
    while True:
        for actor, batch, attempts, incarnation in plan.assignments():
            pending[actors[actor].generate.remote(batch)] = (actor, batch, attempts, incarnation)
        if not pending:
            if plan.work_left():  # nothing in flight yet work left: every actor is gone
                raise ClusterError(f"every sampling actor died ({len(actors)} started, each restarted up to "
                                   f"{ACTOR_MAX_RESTARTS} times) with rows left; rerun with --resume")
            return plan.resubmitted
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor, batch, attempts, incarnation = pending.pop(ref)
        try:
            results = ray.get(ref)
            plan.finished(actor)
        except ray.exceptions.RayActorError:  # the actor process died (killed, OOM, node lost)
            results = plan.actor_died(actor, batch, attempts, incarnation)
            if results is None:
                continue
        except ray.exceptions.RayTaskError as e:  # generate raised: a bug or a device error; rows say so
            plan.finished(actor)
            cause = getattr(e, "cause", None) or e
            results = [result_row(r, error=f"generation failed: {type(cause).__name__}: {first_line(cause)}")
                       for r in batch]
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
            raise ClusterError(f"prompt {number} must be a string or a dict with a 'prompt', not {type(item).__name__}")
    return records


def _checked(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except BatchSampleError as e:
        raise ClusterError(str(e)) from None


def sample_prompts(prompts, cfg: SampleConfig | None = None, actors: list | None = None,
                   progress: bool = False) -> list[dict]:
    """The Python API: result rows (see batch_sampling.OUTPUT_COLUMNS) for prompts (strings, or dicts with
    'prompt' and optional 'id' and per-row settings), num_samples rows each, in input order.

        from nanogpt_ray.cluster.sampling import sample_prompts
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
    streamed to the output as batches finish. Returns a summary (rows, errors, tokens, seconds).
    Either may be a URI (s3://, gs://): prompts are fetched first, the output is written locally and uploaded
    as one object at the end (with --resume, the object's rows are kept and skipped)."""
    _checked(require_output, cfg.output)
    if is_uri(cfg.prompts) or is_uri(cfg.output):
        with local_input(cfg.prompts) as prompts, staged_output(cfg.output, cfg.resume) as output:
            summary = sample_file(dataclasses.replace(cfg, prompts=prompts, output=output), actors)
        print(f"uploaded {cfg.output}", file=sys.stderr)
        return summary
    records = _checked(read_batch_prompts, cfg.prompts, cfg.output)
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
    resubmitted = 0

    def on_results(results):
        sink(results)
        bar.update(results)

    try:
        if rows and actors is not None:
            resubmitted = run_batches(actors, plan_batches(rows, cfg.batch_size), on_results)
        elif rows:
            with ray_session(cfg.address, include_dashboard=cfg.dashboard):
                actors = start_sampler_actors(cfg)
                try:
                    resubmitted = run_batches(actors, plan_batches(rows, cfg.batch_size), on_results)
                finally:
                    stop_actors(actors)
    finally:
        bar.close()
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
    import ray.data

    started = connect(cfg.address, include_dashboard=cfg.dashboard)
    try:
        ds = source if isinstance(source, ray.data.Dataset) else ray.data.read_parquet(source)
        num_actors, options = plan_sampler_actors(cfg, ray.cluster_resources())
        if not cfg.num_actors and "num_gpus" not in options:
            num_actors = max(1, num_actors - 1)  # an actor pool holding every CPU starves the read tasks
        results = ds.map_batches(
            SampleBatchUDF, fn_constructor_kwargs={"config": _sampler_config(cfg)},
            compute=ray.data.ActorPoolStrategy(size=num_actors), batch_size=cfg.batch_size * 4,
            batch_format="pyarrow", **options)
        if output:
            results.write_parquet(output)
            return output
        return results
    finally:
        if started and output:
            disconnect()
