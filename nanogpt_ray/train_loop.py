"""nanoGPT's train.py as one function, `train_loop_per_worker(config)`, run by every Ray Train worker.

Read it top to bottom like nanoGPT's train.py. The few places where Ray enters are marked `# [ray]` and
all sit behind `Reporter`, a small seam: under Ray Train it calls `ray.train.report`/`get_checkpoint`,
without Ray (`python -c "from nanogpt_ray.train_loop import run_bare; ..."`, a GPU box without Ray, the
speed benchmark) it only logs. This is the only module that calls `ray.train.*` inside workers.

Contracts worth knowing before reading the loop:
- Global batch: `gradient_accumulation_steps` is global (as in nanoGPT) and split across workers; each
  iteration consumes the same tokens whatever the worker count.
- Data order: global micro-step k (0 <= k < gradient_accumulation_steps) draws its windows from its own
  torch.Generator seeded with `seed + k`; worker r runs micro-steps r*m .. r*m+m-1 (m per worker). The batch
  stream is therefore the same for 1 worker x accumulation 2 and 2 workers x accumulation 1, and saving the
  generators' states resumes it exactly.
- Reports: every rank reports at the same iterations (a report is a barrier): each `log_interval`, each
  eval, and at the end. Rank 0 attaches the checkpoint (a directory with our ckpt.pt).
- Eval: eval_iters batches per split, batch j drawn from a generator seeded by (seed, split, j), shared out
  round-robin over the ranks and all-reduced, so val loss does not depend on the worker count.
- Non-finite loss: the step is skipped and every rank rolls back to the last checkpoint, at most
  `max_nan_rollbacks` times, then the run fails naming the iteration.
  Test hook: NANOGPT_RAY_INJECT_NAN_AT_ITER=ITER[:TIMES] makes rank 0's loss NaN at iteration ITER
  (the first TIMES times that iteration runs in this process; default once).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import uuid

import torch

from .checkpoint import CKPT_NAME, clean_state_dict, load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import GPT2_PRESETS, TrainConfig, from_dict, to_dict
from .data import check_block_size, get_batch, load_split
from .device import autocast_context, enable_tf32, resolve_device, resolve_dtype
from .files import atomic_copy
from .model import GPT, GPTConfig
from .tokenizer import read_meta

INJECT_NAN_ENV = "NANOGPT_RAY_INJECT_NAN_AT_ITER"


class NonFiniteLossError(RuntimeError):
    """The loss stayed non-finite after every allowed rollback."""


# ----------------------------------------------------------------------------- the Ray seam

class Reporter:
    """Training without Ray: one process (or torchrun), reports go to stdout and `history`."""

    in_ray = False

    def __init__(self):
        import torch.distributed as dist

        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.history: list[dict] = []

    def device(self, requested: str) -> str:
        device = resolve_device(requested)
        if device == "cuda":
            device = f"cuda:{self.local_rank}"
        return device

    def node_id(self) -> str:
        import socket

        return socket.gethostname()

    def restored_checkpoint_dir(self) -> str | None:
        """A checkpoint the framework hands back after a restart; none without Ray."""
        return None

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.history.append(dict(metrics))

    def latest_checkpoint_dir(self, out_dir: str) -> str | None:
        """Where a NaN rollback reloads from."""
        path = os.path.join(out_dir, CKPT_NAME)
        return path if os.path.exists(path) else None


class RayReporter(Reporter):
    """Training under Ray Train's TorchTrainer."""

    in_ray = True

    def __init__(self):
        import ray.train  # [ray]

        context = ray.train.get_context()  # [ray]
        self.world_size = context.get_world_size()
        self.rank = context.get_world_rank()
        self.local_rank = context.get_local_rank()
        self.history = []

    def device(self, requested: str) -> str:
        if requested != "auto":
            return resolve_device(requested)
        import ray.train.torch  # [ray]

        return str(ray.train.torch.get_device())  # [ray] the GPU Ray assigned to this worker, or cpu

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()  # [ray]

    def restored_checkpoint_dir(self) -> str | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # [ray] set when Ray restarts the group or resumes the run
        if checkpoint is None:
            return None
        return _materialize(checkpoint)

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        import ray.train

        self.history.append(dict(metrics))
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)  # [ray] a barrier: every rank reports

    def latest_checkpoint_dir(self, out_dir: str) -> str | None:
        import ray.train

        # [ray] blocks until every report so far is committed, so all ranks see the same latest checkpoint
        reported = ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        if reported:
            latest = max(reported, key=lambda r: r.metrics.get("iter", -1))
            return _materialize(latest.checkpoint)
        return self.restored_checkpoint_dir()

    def wait_committed(self) -> None:
        import ray.train

        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def _materialize(checkpoint) -> str:
    """A local directory holding the checkpoint's files (downloaded when storage is remote)."""
    local = checkpoint.path if checkpoint.filesystem.type_name == "local" else None
    if local and os.path.isdir(local):
        return local
    return checkpoint.to_directory(tempfile.mkdtemp(prefix="nanogpt-ckpt-"))


def make_reporter() -> Reporter:
    """RayReporter inside a Ray Train worker, the bare Reporter anywhere else."""
    return RayReporter() if _in_train_worker() else Reporter()


def _in_train_worker() -> bool:
    if "ray" not in sys.modules:  # a process that never imported ray is not a Ray worker
        return False
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        get_train_context()  # raises outside a Ray Train worker
        return True
    except Exception:
        return False


# ----------------------------------------------------------------------------- helpers

def get_lr(it: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters, then min_lr (nanoGPT's schedule)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def _nan_injection() -> tuple[int, int] | None:
    value = os.environ.get(INJECT_NAN_ENV, "")
    if not value:
        return None
    at, _, times = value.partition(":")
    return int(at), int(times or 1)


def _all_gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def _all_reduce_sum(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def log(reporter: Reporter, msg: str) -> None:
    if reporter.rank == 0:
        print(msg, flush=True)


# ----------------------------------------------------------------------------- the loop

def train_loop_per_worker(config: dict, reporter: Reporter | None = None) -> None:
    """What TorchTrainer runs on every worker. Returns nothing: Ray pickles a return value back to the
    controller (which then imports this module), so results travel through reports only."""
    train(config, reporter or make_reporter())


def train(config: dict, reporter: Reporter) -> Reporter:
    """nanoGPT's train.py body; `reporter` decides whether Ray is underneath."""
    cfg = from_dict(TrainConfig, config)
    rank, world_size = reporter.rank, reporter.world_size
    master_process = rank == 0
    if cfg.gradient_accumulation_steps % world_size != 0:
        raise ValueError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must divide by the "
                         f"{world_size} workers")
    m = cfg.gradient_accumulation_steps // world_size  # micro-steps on this worker
    tokens_per_iter = cfg.tokens_per_iter()
    log(reporter, f"tokens per iteration will be: {tokens_per_iter:,} "
                  f"({cfg.gradient_accumulation_steps} micro-steps x {cfg.batch_size} x {cfg.block_size}; "
                  f"{world_size} workers x {m} each)")
    if master_process:
        os.makedirs(cfg.out_dir, exist_ok=True)

    # ------------------------------------------------------------------ device, precision
    device = reporter.device(cfg.device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(device)
        enable_tf32()
    dtype = resolve_dtype(cfg.dtype, device)
    ctx = autocast_context(device, dtype)
    torch.manual_seed(cfg.seed + rank)  # dropout differs per rank, as nanoGPT's seed_offset

    # ------------------------------------------------------------------ data
    data_dir = cfg.dataset_dir()
    train_data, val_data = load_split(data_dir, "train"), load_split(data_dir, "val")
    check_block_size(train_data, cfg.block_size, os.path.join(data_dir, "train.bin"))
    check_block_size(val_data, cfg.block_size, os.path.join(data_dir, "val.bin"))
    my_streams = range(rank * m, rank * m + m)  # the global micro-steps this worker runs
    generators = {k: torch.Generator().manual_seed(cfg.seed + k) for k in my_streams}

    # ------------------------------------------------------------------ model init
    # [ray] after a worker failure (or a rerun of the same run) Ray hands back the latest checkpoint
    ckpt_source = reporter.restored_checkpoint_dir()
    if ckpt_source is None and cfg.init_from == "resume":
        ckpt_source = cfg.out_dir
    ckpt = load_checkpoint(ckpt_source, map_location="cpu") if ckpt_source else None
    iter_num, best_val_loss, wandb_run_id = 0, 1e9, None
    meta = read_meta(data_dir)
    meta_vocab_size = meta.get("vocab_size") if meta else None
    if ckpt is not None:
        log(reporter, f"resuming from iteration {ckpt['iter_num']} ({ckpt_source})")
        model = model_from_checkpoint(ckpt, dropout=cfg.dropout)
        model_args = dict(ckpt["model_args"])
        iter_num, best_val_loss = int(ckpt["iter_num"]), float(ckpt["best_val_loss"])
        wandb_run_id = ckpt.get("resume", {}).get("wandb_run_id")
    elif cfg.init_from in GPT2_PRESETS or os.path.isdir(cfg.init_from):
        log(reporter, f"initializing from OpenAI GPT-2 weights: {cfg.init_from}")
        model = GPT.from_pretrained(cfg.init_from, dict(dropout=cfg.dropout))
        model_args = {k: getattr(model.config, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")}
        model_args["dropout"] = cfg.dropout
    else:
        model_args = dict(cfg.model_args(), vocab_size=meta_vocab_size or 50304)
        model = GPT(GPTConfig(**model_args))
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)  # e.g. finetune GPT-2 (1024) with a shorter context
        model_args["block_size"] = cfg.block_size
    resumed_from = iter_num
    model.to(device)
    raw_model = model  # the plain GPT: its state_dict has no _orig_mod./module. prefixes

    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # loss scaling only for fp16
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)

    def restore(state: dict) -> None:
        """Optimizer, scaler and every RNG stream from a checkpoint (the model is loaded separately)."""
        optimizer.load_state_dict(state["optimizer"])
        extra = state.get("resume", {})
        if "scaler" in extra and extra["scaler"]:
            scaler.load_state_dict(extra["scaler"])
        streams = extra.get("data_rng", [])
        if len(streams) == cfg.gradient_accumulation_steps:
            for k in my_streams:
                generators[k].set_state(streams[k])
        elif streams:
            log(reporter, "checkpoint has a different gradient_accumulation_steps: the batch stream restarts")
        torch_rng = extra.get("torch_rng", [])
        if len(torch_rng) == world_size:  # dropout RNGs only carry over with the same worker count
            torch.set_rng_state(torch_rng[rank])
            cuda_rng = extra.get("cuda_rng", [])
            if device_type == "cuda" and len(cuda_rng) == world_size and cuda_rng[rank].numel():
                torch.cuda.set_rng_state(cuda_rng[rank])

    if ckpt is not None and "optimizer" in ckpt:
        restore(ckpt)
    ckpt = None  # free memory

    if cfg.compile:
        log(reporter, "compiling the model... (takes a ~minute)")
        model = torch.compile(model)
    if world_size > 1:
        # [ray] TorchTrainer already initialised the process group (gloo on CPU, nccl on GPUs)
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_index = torch.device(device).index
        model = DDP(model, device_ids=[device_index] if device_type == "cuda" and device_index is not None else None)
    eval_model = model.module if world_size > 1 else model

    # ------------------------------------------------------------------ wandb (rank 0 only)
    wandb_run = None
    if cfg.wandb_log and master_process:
        import wandb

        wandb_run_id = wandb_run_id or uuid.uuid4().hex[:8]
        wandb_run = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=to_dict(cfg),
                               id=wandb_run_id, resume="allow", dir=cfg.out_dir)

    node_ids = sorted(set(_all_gather(reporter.node_id(), world_size)))

    # ------------------------------------------------------------------ eval and checkpoints
    @torch.no_grad()
    def estimate_loss() -> dict:
        """Mean loss over eval_iters fixed batches per split; batch j runs on rank j % world_size."""
        out = {}
        eval_model.eval()
        for split, data in (("train", train_data), ("val", val_data)):
            totals = torch.zeros(2, dtype=torch.float64, device=device)
            for j in range(rank, cfg.eval_iters, world_size):
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + (1 if split == "val" else 0) * 7_919 + j)
                X, Y = get_batch(data, cfg.batch_size, cfg.block_size, g, device)
                with ctx:
                    _, loss = eval_model(X, Y)
                totals[0] += loss.double()
                totals[1] += 1
            _all_reduce_sum(totals, world_size)
            out[split] = (totals[0] / totals[1]).item()
        eval_model.train()
        return out

    def build_checkpoint() -> dict | None:
        """The nanoGPT dict plus what exact resume needs; gathered on every rank, returned on rank 0."""
        data_rng = _all_gather([generators[k].get_state() for k in my_streams], world_size)
        torch_rng = _all_gather(torch.get_rng_state(), world_size)
        cuda_rng = _all_gather(torch.cuda.get_rng_state() if device_type == "cuda" else torch.empty(0, dtype=torch.uint8),
                               world_size)
        if not master_process:
            return None
        return {
            "model": clean_state_dict(raw_model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "model_args": model_args,
            "iter_num": iter_num,
            "best_val_loss": float(best_val_loss),
            "config": to_dict(cfg),
            "resume": {
                "data_rng": [state for rank_states in data_rng for state in rank_states],  # index = global micro-step
                "torch_rng": torch_rng,
                "cuda_rng": cuda_rng,
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "wandb_run_id": wandb_run_id,
                "num_workers": world_size,
            },
        }

    def report(metrics: dict, with_checkpoint: bool) -> None:
        """Every rank calls this at the same iterations; rank 0 attaches the checkpoint when asked."""
        nonlocal report_time
        metrics = dict(metrics, iter=iter_num, resumed_from=resumed_from, node_id=reporter.node_id(),
                       wall_tokens_per_s=wall_tokens_per_s, report_time_s=report_time,
                       node_ids=node_ids, world_size=world_size,
                       nan_rollbacks=nan_rollbacks)
        if not with_checkpoint:
            t0 = time.time()
            reporter.report(metrics)
            report_time += time.time() - t0  # what Ray's report costs the loop (a barrier plus a queue hand-off)
            return
        state = build_checkpoint()
        tmp_dir = tempfile.mkdtemp(prefix="nanogpt-ckpt-") if master_process else None
        try:
            if master_process:
                save_checkpoint(state, os.path.join(tmp_dir, CKPT_NAME))
            reporter.report(metrics, checkpoint_dir=tmp_dir)  # [ray] copied to storage_path before returning
            if isinstance(reporter, RayReporter) and master_process:
                reporter.wait_committed()  # out_dir/ckpt.pt appears only once Ray has the same checkpoint
            if master_process:
                # the latest good checkpoint also lands in out_dir, so `sample --init_from=resume` works as in
                # nanoGPT (atomically: a kill never leaves half a file)
                atomic_copy(os.path.join(tmp_dir, CKPT_NAME), os.path.join(cfg.out_dir, CKPT_NAME))
        finally:
            if tmp_dir:
                shutil.rmtree(tmp_dir, ignore_errors=True)

    def rollback(bad_iter: int) -> None:
        nonlocal iter_num, best_val_loss
        source = reporter.latest_checkpoint_dir(cfg.out_dir)
        if source is None:
            raise NonFiniteLossError(f"loss is not finite at iteration {bad_iter} and there is no checkpoint to roll back to; "
                                     "lower learning_rate or check the data")
        state = load_checkpoint(source, map_location="cpu")
        raw_model.load_state_dict(clean_state_dict(state["model"]))
        restore(state)
        iter_num, best_val_loss = int(state["iter_num"]), float(state["best_val_loss"])
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ training loop
    inject = _nan_injection()
    injected = 0
    nan_rollbacks = 0
    local_iter_num = 0
    running_mfu = -1.0
    step_time, steps_timed = 0.0, 0  # training time since the last log line (eval and reports left out)
    # wall-clock throughput from the first log line on, everything included (eval, reports, checkpoints):
    # what a benchmark of the loop bare vs under Ray compares
    first_log, wall_tokens_per_s = None, 0.0
    report_time = 0.0  # seconds spent in metrics-only reports
    while True:
        lr = get_lr(iter_num, cfg)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr

        # evaluate, report and checkpoint at eval_interval and at the end (every rank takes part)
        at_end = iter_num >= cfg.max_iters
        if iter_num % cfg.eval_interval == 0 or at_end or cfg.eval_only:
            losses = estimate_loss()
            log(reporter, f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            improved = losses["val"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val"])
            # nothing new to save at iteration 0 or right after a resume (the checkpoint just loaded is this one)
            save = iter_num > resumed_from and not cfg.eval_only and (improved or cfg.always_save_checkpoint)
            metrics = {"train_loss": losses["train"], "val_loss": losses["val"], "best_val_loss": best_val_loss, "lr": lr}
            if wandb_run is not None:
                wandb_run.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr,
                               "mfu": running_mfu * 100}, step=iter_num)
            report(metrics, with_checkpoint=save)
            if save:
                log(reporter, f"saved checkpoint at iteration {iter_num} to {cfg.out_dir}")
        if cfg.eval_only or at_end:
            break

        # forward/backward with gradient accumulation; grads sync across ranks only on the last micro-step
        t_iter = time.time()
        loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
        streams = iter(my_streams)
        X, Y = get_batch(train_data, cfg.batch_size, cfg.block_size, generators[next(streams)], device)
        for micro_step in range(m):
            if world_size > 1:
                # no all-reduce until the last micro-step: one gradient sync per iteration, not m
                model.require_backward_grad_sync = micro_step == m - 1
            with ctx:
                _, loss = model(X, Y)
                if inject and master_process and iter_num == inject[0] and injected < inject[1] and micro_step == 0:
                    injected += 1
                    loss = loss * float("nan")  # test hook (NANOGPT_RAY_INJECT_NAN_AT_ITER)
                loss_sum += loss.detach().double()
                loss = loss / m  # DDP averages over ranks, so the gradient is the mean over all micro-steps
            if micro_step < m - 1:
                # fetch the next micro-batch while the accelerator is still busy with this backward pass
                X, Y = get_batch(train_data, cfg.batch_size, cfg.block_size, generators[next(streams)], device)
            scaler.scale(loss).backward()
        # the iteration's mean loss over every rank: both the logged value and the NaN check all ranks agree on
        loss_mean = _all_reduce_sum(loss_sum, world_size).item() / cfg.gradient_accumulation_steps
        if not math.isfinite(loss_mean):
            nan_rollbacks += 1
            if nan_rollbacks > cfg.max_nan_rollbacks:
                raise NonFiniteLossError(f"loss is {loss_mean} at iteration {iter_num}; rolled back {nan_rollbacks - 1} "
                                         f"times (max_nan_rollbacks={cfg.max_nan_rollbacks}); lower learning_rate or check the data")
            bad_iter = iter_num
            rollback(bad_iter)
            log(reporter, f"loss is {loss_mean} at iteration {bad_iter}: rolled back to iteration {iter_num} "
                          f"({nan_rollbacks}/{cfg.max_nan_rollbacks})")
            continue
        if cfg.grad_clip != 0.0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)  # free the gradients' memory now

        iter_num += 1
        local_iter_num += 1
        step_time += time.time() - t_iter
        steps_timed += 1
        if iter_num % cfg.log_interval == 0:
            dt = step_time / steps_timed  # mean seconds per training iteration since the last log line
            step_time, steps_timed = 0.0, 0
            if local_iter_num >= 5:  # let the first iterations (compile, warm-up) pass
                mfu = raw_model.estimate_mfu(cfg.batch_size * m, dt)
                running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
            tokens_per_s = tokens_per_iter / dt
            if first_log is None:
                first_log = (time.time(), iter_num)
            elif iter_num > first_log[1]:
                wall_tokens_per_s = tokens_per_iter * (iter_num - first_log[1]) / (time.time() - first_log[0])
            eta_s = (cfg.max_iters - iter_num) * dt
            log(reporter, f"iter {iter_num}: loss {loss_mean:.4f}, time {dt * 1000:.2f}ms, {tokens_per_s:,.0f} tok/s, "
                          f"mfu {running_mfu * 100:.2f}%, lr {lr:.2e}, eta {eta_s / 60:.1f}min")
            if wandb_run is not None:
                wandb_run.log({"iter": iter_num, "train/step_loss": loss_mean, "lr": lr, "tokens_per_s": tokens_per_s,
                               "ms_per_iter": dt * 1000}, step=iter_num)
            if iter_num % cfg.eval_interval != 0 and iter_num < cfg.max_iters:  # eval reports those iterations
                report({"loss": loss_mean, "lr": lr, "ms_per_iter": dt * 1000, "tokens_per_s": tokens_per_s,
                        "mfu": running_mfu, "eta_s": eta_s}, with_checkpoint=False)

    if wandb_run is not None:
        wandb_run.finish()
    return reporter


def run_bare(config: dict | TrainConfig) -> Reporter:
    """The same loop in this process, no Ray: one worker, or every rank under
    `torchrun --nproc_per_node=N -m nanogpt_ray.train_loop <config files> --key=value`."""
    if isinstance(config, TrainConfig):
        config = to_dict(config)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():  # torchrun: under Ray, TorchTrainer does this
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    reporter = Reporter()
    if reporter.rank == 0:
        print(f"training without Ray in process {os.getpid()}", file=sys.stderr)
    return train(config, reporter)


if __name__ == "__main__":
    # Without Ray: python -m nanogpt_ray.train_loop configs/train_shakespeare_char_cpu.py --max_iters=100
    from .config import load_config, split_args

    files, overrides = split_args(sys.argv[1:])
    run_bare(load_config(TrainConfig, files, overrides))
