"""What `--dry_run=True` prints: the plan of a train, tune, sample or serve command after every check it makes
before starting anything (config, data, checkpoint, storage, devices, whether the workers fit, the port), and
then nothing is trained, sampled or served.

Pure: the Ray wing hands in the cluster's nodes as plain dicts; with no cluster named, `this_machine_nodes()`
stands for the local cluster the command would start, so a dry run starts no Ray at all.
"""

from __future__ import annotations

import os

from .config import GPT2_PRESETS, GPT2_SHAPES, GPT2_VOCAB_SIZE, SampleConfig, ServeConfig, SweepConfig, TrainConfig
from .data import load_split
from .storage import is_uri
from .tokenizer import read_meta

DONE = "dry run: every check passed and nothing was started; drop --dry_run to run it"


def this_machine_nodes() -> list[dict]:
    """The one node of the local Ray cluster a command would start here, as ray.nodes() would show it."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [{"Alive": True, "Resources": {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}}]


def total_resources(nodes: list[dict]) -> dict:
    """ray.cluster_resources() of these nodes."""
    total: dict[str, float] = {}
    for node in nodes:
        for key, value in node.get("Resources", {}).items():
            total[key] = total.get(key, 0.0) + value
    return total


def describe_cluster(nodes: list[dict], where: str) -> str:
    """'a local Ray cluster ... (1 node: 2 CPUs, no GPU)'."""
    total = total_resources(nodes)
    gpus = f"{total['GPU']:g} GPUs" if total.get("GPU") else "no GPU"
    return f"{where} ({len(nodes)} node{'s' if len(nodes) != 1 else ''}: {total.get('CPU', 0):g} CPUs, {gpus})"


def describe_resources(resources: dict) -> str:
    """{'CPU': 1.0, 'GPU': 1} -> '1 CPU, 1 GPU'."""
    return ", ".join(f"{value:g} {key}" for key, value in resources.items())


def _millions(params: int) -> str:
    return f"{params / 1e6:.2f}M parameters"


def _model_line(cfg, vocab_size: int | None) -> str:
    """The model a run builds: its shape and size (scratch), the GPT-2 weights it loads, or the checkpoint it resumes."""
    from .sweep import count_params

    if cfg.init_from == "resume":
        return f"resumes the checkpoint in {cfg.out_dir} (its shape and iteration)"
    if cfg.init_from in GPT2_PRESETS:
        shape = GPT2_SHAPES[cfg.init_from]
        params = count_params(shape["n_layer"], shape["n_embd"], GPT2_VOCAB_SIZE, bias=True)
        return f"OpenAI's {cfg.init_from} weights ({_millions(params)}; downloaded from Hugging Face on first use, not now)"
    if cfg.init_from != "scratch":
        return f"GPT-2 weights from {cfg.init_from}"
    params = count_params(cfg.n_layer, cfg.n_embd, vocab_size, bias=cfg.bias, arch=cfg.arch)
    return (f"{cfg.arch} {cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd}, block {cfg.block_size}, vocab "
            f"{vocab_size:,}: {_millions(params)}, from scratch")


def _data_line(cfg: TrainConfig) -> str:
    if is_uri(cfg.dataset_dir()):
        return f"{cfg.dataset_dir()} (train.bin and val.bin readable; fetched into each node's cache at the start)"
    sizes = {split: len(load_split(cfg.dataset_dir(), split)) for split in ("train", "val")}
    return f"{cfg.dataset_dir()}: {sizes['train']:,} train and {sizes['val']:,} val tokens"


def _schedule_line(cfg: TrainConfig) -> str:
    lr = (f"lr {cfg.learning_rate:g} ({cfg.warmup_iters:,} warm-up, cosine to {cfg.min_lr:g} at {cfg.lr_decay_iters:,})"
          if cfg.decay_lr else f"constant lr {cfg.learning_rate:g}")
    if cfg.optimizer == "muon":
        lr += f", Muon {cfg.muon_lr:g}"
    return (f"{cfg.max_iters:,} iterations ({cfg.max_iters * cfg.tokens_per_iter():,} tokens), {cfg.optimizer} {lr}; "
            f"eval every {cfg.eval_interval:,} ({cfg.eval_iters} batches per split)")


def train_plan(cfg: TrainConfig, local: bool, mode_line: str, workers_line: str, device_line: str) -> str:
    """The plan of `train --dry_run=True`, after launch has made every check."""
    from .preflight import expected_vocab_size

    meta = None if is_uri(cfg.dataset_dir()) else read_meta(cfg.dataset_dir())
    vocab_size = expected_vocab_size(cfg, meta)
    workers = max(1, cfg.num_workers) if not cfg.is_elastic() else cfg.max_workers
    micro = f"{cfg.gradient_accumulation_steps} micro-steps" + (f" shared by {workers} workers" if workers > 1 else "")
    checkpoints = os.path.join(cfg.out_dir, "ckpt.pt")
    lines = [
        f"mode:        {mode_line}",
        f"workers:     {workers_line}",
        f"device:      {device_line}; {cfg.parallelism}, compile={cfg.compile}",
        f"model:       {_model_line(cfg, vocab_size)}",
        f"batch:       {cfg.batch_size} x {cfg.block_size} tokens x {micro} = {cfg.tokens_per_iter():,} tokens per iteration",
        f"schedule:    {_schedule_line(cfg)}",
        f"data:        {_data_line(cfg)}",
        f"checkpoints: {checkpoints}" + ("" if local else
                                         f"; Ray run {cfg.resolved_run_name()!r} in {cfg.resolved_storage_path()}"),
    ]
    return "\n".join(lines + [DONE])


def sweep_plan(sweep: SweepConfig, base: TrainConfig, axes: dict, n_trials: int, concurrency: int, cluster: str,
               sweep_dir: str) -> str:
    """The plan of `tune --dry_run=True`: trials, how many at once, the search space, the scheduler."""
    space = "; ".join(f"{key} in {list(axis[1])}" if axis[0] == "grid" else f"{key} log-uniform in [{axis[1]:g}, {axis[2]:g}]"
                      for key, axis in axes.items()) or "the base config only"
    if sweep.scaling_law or sweep.scheduler == "none":
        scheduler = "none: every trial runs to max_iters" + (" (scaling_law)" if sweep.scaling_law else "")
    else:
        scheduler = (f"ASHA on val_loss, grace {sweep.grace_period or 2 * base.eval_interval:,} iterations, keeps "
                     f"1/{sweep.reduction_factor:g} at each rung")
    lines = [
        f"sweep:       {sweep.sweep_name}: {n_trials} trials, {concurrency} at a time ({sweep.workers_per_trial} "
        f"worker(s) x {sweep.cpus_per_worker:g} CPU each) on {cluster}",
        f"search:      {space}",
        f"scheduler:   {scheduler}",
        f"each trial:  {base.max_iters:,} iterations of {base.tokens_per_iter():,} tokens from "
        f"{sweep.base_config or 'the default config'}",
        f"results:     {sweep_dir}" + (" (resumed: finished trials kept)" if sweep.resume else ""),
    ]
    return "\n".join(lines + [DONE])


def _loaded_model_line(model, tokenizer, source: str) -> str:
    c = model.config
    return (f"{source}: {c.n_layer} layers x {c.n_head} heads x {c.n_embd}, block {c.block_size}, vocab {c.vocab_size:,} "
            f"({_millions(model.get_num_params())}), {tokenizer.kind} tokenizer")


def _model_for_plan(cfg) -> tuple[str, object]:
    """(model line, tokenizer) of a sample/serve config: the checkpoint or GPT-2 directory is loaded and checked
    against its tokenizer; OpenAI's weights are named, not downloaded."""
    from .checkpoint import load_model
    from .sample import check_tokenizer_fits, resolve_tokenizer
    from .tokenizer import GPT2Tokenizer

    if cfg.init_from in GPT2_PRESETS:
        return _model_line(cfg, None), GPT2Tokenizer()
    model, ckpt = load_model(cfg.init_from, cfg.out_dir, cfg.ckpt_path)
    tokenizer = resolve_tokenizer(ckpt, cfg.init_from, cfg.data_root)
    check_tokenizer_fits(tokenizer, model)
    source = f"checkpoint {cfg.ckpt_path or cfg.out_dir}" if cfg.init_from == "resume" else f"GPT-2 weights in {cfg.init_from}"
    return _loaded_model_line(model, tokenizer, source), tokenizer


def _prompts_line(cfg: SampleConfig) -> str:
    """What batch sampling would read and write: the prompts are read and counted, the output checked."""
    from .batch_sampling import BatchSampleError, check_output, expand_rows, read_batch_prompts, require_output
    from .storage import check_readable, check_writable

    require_output(cfg.output)
    actors = f"{cfg.num_actors} Ray actors" if cfg.num_actors else "one Ray actor per free CPU (or GPU)"
    if is_uri(cfg.prompts) or is_uri(cfg.output):
        if is_uri(cfg.prompts):
            check_readable(cfg.prompts, "prompts")
        elif not os.path.isfile(cfg.prompts):
            raise BatchSampleError(f"prompts file {cfg.prompts!r} does not exist")
        if is_uri(cfg.output):
            check_writable(cfg.output.rsplit("/", 1)[0], "output")
        else:
            check_output(cfg.output)
        return f"the prompts in {cfg.prompts} (fetched at the start) -> {cfg.output}, on {actors}"
    records = read_batch_prompts(cfg.prompts, cfg.output)
    rows = sum(1 for _ in expand_rows(records, cfg))
    return f"{len(records)} prompts ({rows} rows with their samples) from {cfg.prompts} -> {cfg.output}, on {actors}"


def sample_plan(cfg: SampleConfig) -> str:
    """The plan of `sample --dry_run=True`: the model and prompt(s) checked, nothing generated."""
    from .device import resolve_device
    from .sample import encode_prompt, read_start

    device = resolve_device(cfg.device)
    model_line, tokenizer = _model_for_plan(cfg)
    if cfg.prompts:
        work_line = _prompts_line(cfg)
    else:
        prompt_ids = encode_prompt(tokenizer, read_start(cfg.start))
        work_line = f"{cfg.num_samples} samples of a {len(prompt_ids)}-token prompt, printed, in this process"
    p = cfg.sampling_params()
    lines = [
        f"model:       {model_line}",
        f"device:      {device}",
        f"work:        {work_line}",
        f"sampling:    {p.max_new_tokens} new tokens, temperature {p.temperature:g}, top_k {p.top_k}, top_p {p.top_p}, "
        f"seed {p.seed}",
    ]
    return "\n".join(lines + [DONE])


def serve_plan(cfg: ServeConfig) -> str:
    """The plan of `serve --dry_run=True`: the model loaded and checked, the port free; no Ray, nothing served."""
    from .preflight import check_port_free, is_this_machine

    model_line, _ = _model_for_plan(cfg)
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    if is_this_machine(address):
        check_port_free(cfg.host, cfg.port)
    cluster = f"the Ray cluster at {address} (not contacted by a dry run)" if address else \
        "a local Ray cluster this command would start"
    replicas = (f"autoscaling {cfg.min_replicas}..{cfg.max_replicas} (target {cfg.target_ongoing_requests:g} requests each)"
                if cfg.max_replicas else f"{cfg.num_replicas}")
    lines = [
        f"model:       {model_line}",
        f"endpoint:    http://{cfg.host}:{cfg.port}/v1 serving {cfg.served_model_name()!r}"
        + (" (the port is free)" if is_this_machine(address) else ""),
        f"replicas:    {replicas} x {cfg.cpus_per_replica:g} CPU, {cfg.gpus_per_replica:g} GPU; {cfg.max_batch_size} rows "
        f"decoded together per replica, {cfg.max_queued_requests} queued before 503",
        f"cluster:     {cluster}",
    ]
    if cfg.watch:
        lines.append(f"watch:       polls {cfg.ckpt_path or os.path.join(cfg.out_dir, 'ckpt.pt')} every "
                     f"{cfg.watch_interval_s:g} s and swaps in newer checkpoints")
    return "\n".join(lines + [DONE])
