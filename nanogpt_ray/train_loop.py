"""nanoGPT's train.py as one function, `train(config, runtime)`, run by every worker. No Ray in this file.

Read `train` top to bottom like nanoGPT's train.py. Whatever depends on how the process was launched sits
behind `Runtime`: this module's plain Runtime serves one process, torchrun and the GPU check script;
`cluster/train.py` builds the Ray one (report to Ray Train, the checkpoint Ray restored, the GPU Ray assigned).

Contracts worth knowing before reading the loop:
- Global batch: `gradient_accumulation_steps` is global (as in nanoGPT) and split across workers; each
  iteration consumes the same tokens whatever the worker count.
- Data order (data_order): 'nanogpt' draws everything from torch's global generator seeded seed + rank, in
  nanoGPT's order (model init, the first batch, the eval batches, training batches and dropout), so one process
  prints nanoGPT's losses and each rank of several draws its own batches. 'worker_invariant' gives global
  micro-step k its own generator (worker r runs micro-steps r*m .. r*m+m-1), so 1 worker x accumulation 2 and
  2 workers x accumulation 1 see the same batches. Either way the checkpoint keeps the generators' states, and a
  resume continues exactly (data.NanoGPTBatches, data.MicroStepBatches).
- Reports: every rank reports at the same iterations (a report is a barrier under Ray): each `log_interval`,
  each eval, and at the end. Rank 0 attaches the checkpoint (a directory with our ckpt.pt).
- Eval: eval_iters batches per split. 'nanogpt' order: rank 0 draws and evaluates them all (nanoGPT's master
  process); 'worker_invariant': batch j drawn from a generator seeded by (seed, split, j), shared out
  round-robin over the ranks. Either way the result is all-reduced, so every rank reports the same losses.
- Non-finite loss: the step is skipped and every rank rolls back to the last checkpoint, at most
  `max_nan_rollbacks` times, then the run fails naming the iteration.
  The check costs no host sync: the flag stays on the device and is read where nanoGPT reads the loss anyway
  (each log line) and before every eval, so no checkpoint ever holds a non-finite step. A rollback moves
  the data past the offending iteration's batches (nan_skip_batches) and may lower the lr (nan_lr_scale).
  Tests make a loss non-finite through the runtime (`Runtime.on_loss`), never through the environment.
- Step time: ms/iter and MFU are read after a synchronize at each log line on a GPU, so they count the work
  the GPU did, not only what the CPU queued.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field

import torch

from .checkpoint import (
    CKPT_NAME,
    clean_state_dict,
    load_checkpoint,
    model_entries,
    model_from_checkpoint,
    save_checkpoint,
)
from .config import GPT2_PRESETS, GPTConfig, TrainConfig, UserError, from_dict, to_dict
from .data import MicroStepBatches, NanoGPTBatches, check_block_size, check_token_ids, get_batch, load_split
from .device import autocast_context, choose_device, default_peak_flops, enable_tf32, resolve_dtype
from .files import move_into_place, remove_stale_partials, temp_name_beside
from .hf import from_pretrained
from .model import GPT
from .modern import build_gpt
from .parallel import data_parallel, full_state, is_sharded, load_full_state, set_grad_sync, shard_model, unwrap_ddp
from .storage import local_dataset_dir
from .tokenizer import model_vocab_size, read_meta

STARTUP_T0_ENV = "NANOGPT_RAY_T0"  # when the command started (epoch seconds), for --verbose's startup breakdown


def process_start_time() -> float:
    """When this process started, in epoch seconds (Linux: /proc, to 10 ms; elsewhere: now), so that --verbose
    counts the interpreter's start and the imports too."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time since boot
        since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - since_start
    except (OSError, ValueError, AttributeError):
        return time.time()


PROCESS_T0 = process_start_time()


class NonFiniteLossError(UserError):
    """The loss stayed non-finite after every allowed rollback."""


# ----------------------------------------------------------------------------- the runtime seam

class Runtime:
    """How the loop reaches the world outside it. This plain one trains in one process (or every rank of
    torchrun): reports go to `history`, rollbacks reload out_dir/ckpt.pt. It also keeps the wall-clock
    figures benchmarks compare: tokens/s from the first log report on, and the seconds spent reporting."""

    def __init__(self):
        import torch.distributed as dist

        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.history: list[dict] = []
        self.report_time_s = 0.0  # seconds inside metrics-only reports (a barrier plus a hand-off under Ray)
        self._first_log: tuple[float, int] | None = None  # (time, iter) of the first log report

    def device(self, requested: str) -> str:
        """torchrun gives each process one GPU by local rank; nothing assigns GPUs in a plain process."""
        return choose_device(requested, self.local_rank, None, torch.cuda.device_count())

    def node_id(self) -> str:
        return socket.gethostname()

    def cpu_threads(self, cpus_per_worker: float) -> int:
        """Torch threads for training on CPU: a plain process keeps torch's default, as nanoGPT does."""
        return torch.get_num_threads()

    def restored_checkpoint_dir(self) -> str | None:
        """A checkpoint the launcher hands back after a restart; none in a plain process."""
        return None

    def latest_checkpoint_dir(self, out_dir: str) -> str | None:
        """Where a NaN rollback reloads from."""
        path = os.path.join(out_dir, CKPT_NAME)
        return path if os.path.exists(path) else None

    def wait_committed(self) -> None:
        """Block until every checkpoint reported so far is persisted (instant here: save_checkpoint is)."""

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        """Every rank calls this at the same iterations; rank 0 passes the checkpoint directory, if any."""
        metrics = dict(metrics, report_time_s=self.report_time_s, wall_tokens_per_s=self._wall_tokens_per_s(metrics))
        t0 = time.perf_counter()
        self.history.append(metrics)
        self.send(metrics, checkpoint_dir)
        if checkpoint_dir is None:
            self.report_time_s += time.perf_counter() - t0

    def send(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Hand a report to the launcher; nothing to do in a plain process."""

    def on_loss(self, loss: torch.Tensor, iter_num: int, micro_step: int, X: torch.Tensor) -> torch.Tensor:
        """Each micro-step's loss on its way to the backward pass; unchanged here. The seam where tests
        inject faults (a NaN at a chosen iteration) into any runtime."""
        return loss

    def _wall_tokens_per_s(self, metrics: dict) -> float:
        """Tokens/s from the first log report to now, everything included (eval, reports, checkpoints)."""
        now, it = time.time(), int(metrics.get("iter", 0))
        if "ms_per_iter" in metrics and self._first_log is None:
            self._first_log = (now, it)
        if self._first_log is None or it <= self._first_log[1]:
            return 0.0
        return metrics.get("tokens_per_iter", 0) * (it - self._first_log[1]) / (now - self._first_log[0])


# ----------------------------------------------------------------------------- state and helpers

@dataclass
class TrainState:
    """Everything a checkpoint saves and a rollback restores."""

    model: GPT  # the bare model: its state_dict has no _orig_mod./module. prefixes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: NanoGPTBatches | MicroStepBatches  # where training batches come from (TrainConfig.data_order)
    iter_num: int = 0
    best_val_loss: float = 1e9
    wandb_run_id: str | None = None
    resumed_from: int = 0
    nan_rollbacks: int = 0
    skip_iters: set = field(default_factory=set)  # iterations whose batches made the loss non-finite
    lr_scale: float = 1.0  # nan_lr_scale to the power of the rollbacks so far
    skipped_steps: int | torch.Tensor = 0  # optimizer steps GradScaler skipped (fp16 overflow); on the device in the loop
    meta: dict = field(default_factory=dict)  # rank, world size, device type: what the RNG states belong to


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


class NonFiniteWatch:
    """The first non-finite loss since the last check, kept on the device: noting a loss costs no host sync,
    reading it does (one .item(), where the loop reads the loss anyway)."""

    def __init__(self, device: str):
        self.first_iter = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), dtype=torch.float64, device=device)

    def note(self, loss: torch.Tensor, iter_num: int) -> None:
        first = ~torch.isfinite(loss).all() & (self.first_iter < 0)
        self.first_iter = torch.where(first, iter_num, self.first_iter)
        self.value = torch.where(first, loss.reshape(()), self.value)

    def read(self) -> tuple[int, float] | None:
        """(iteration, value) of the first non-finite loss since the last read, or None."""
        first = int(self.first_iter.item())
        if first < 0:
            return None
        value = float(self.value.item())
        self.first_iter.fill_(-1)
        return first, value


def optimizer_step(state: TrainState) -> None:
    """The optimizer step through GradScaler. In fp16 the scaler skips a step whose gradients overflowed and
    halves its scale; comparing the scale before and after on the device counts those steps without a host sync
    (fused AdamW takes the scaler's inf check on the device too)."""
    before = state.scaler._get_scale_async().clone() if state.scaler.is_enabled() else None  # set by scale(loss)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if before is not None:
        state.skipped_steps = state.skipped_steps + (state.scaler._get_scale_async() < before).long()


def all_gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def log(runtime: Runtime, msg: str) -> None:
    if runtime.rank == 0:
        print(msg, flush=True)


def build_model(cfg: TrainConfig, ckpt: dict | None, meta: dict | None, runtime: Runtime) -> GPT:
    """The model from the checkpoint, OpenAI's weights, or scratch; cropped to cfg.block_size. Its config is
    what checkpoints record."""
    if ckpt is not None:
        model = model_from_checkpoint(ckpt, dropout=cfg.dropout)
    elif cfg.init_from in GPT2_PRESETS or os.path.isdir(cfg.init_from):
        log(runtime, f"initializing from OpenAI GPT-2 weights: {cfg.init_from}")
        model = from_pretrained(cfg.init_from, dropout=cfg.dropout)
    else:
        model = build_gpt(GPTConfig(**cfg.model_args(), vocab_size=model_vocab_size(meta)))
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)  # e.g. finetune GPT-2 (1024) with a shorter context
    return model


def restore(state: TrainState, ckpt: dict, cfg: TrainConfig, runtime: Runtime) -> None:
    """Optimizer, scaler and every RNG stream from a checkpoint (the model is loaded separately)."""
    saved_optimizer = ckpt.get("config", {}).get("optimizer", "adamw")  # nanoGPT's checkpoints: AdamW
    if saved_optimizer != cfg.optimizer:
        raise UserError(f"the checkpoint was trained with optimizer={saved_optimizer!r}; resume it with the same "
                        f"(--optimizer={saved_optimizer}), or start from its weights with a fresh out_dir")
    load_full_state(state.model, state.optimizer, None, ckpt["optimizer"])  # under FSDP: each rank's shard
    extra = ckpt.get("resume", {})
    if extra.get("scaler"):
        state.scaler.load_state_dict(extra["scaler"])
    state.skipped_steps = int(extra.get("skipped_steps", 0))
    streams = extra.get("data_rng", [])
    if len(streams) == cfg.gradient_accumulation_steps:
        state.batches.load_stream_states(streams)
    elif streams:
        log(runtime, "checkpoint has a different gradient_accumulation_steps: the batch stream restarts")
    rank, world_size = runtime.rank, runtime.world_size
    saved_workers = extra.get("num_workers", world_size)
    if saved_workers != world_size:  # an elastic resize, or a resume on another worker count
        log(runtime, f"workers {saved_workers} -> {world_size}: micro-steps per worker "
                     f"{cfg.gradient_accumulation_steps // saved_workers} -> {cfg.gradient_accumulation_steps // world_size}, "
                     "tokens per iteration unchanged")
    torch_rng = extra.get("torch_rng", [])
    if len(torch_rng) == world_size:  # dropout RNGs only carry over with the same worker count
        torch.set_rng_state(torch_rng[rank])
        cuda_rng = extra.get("cuda_rng", [])
        if state.meta["device_type"] == "cuda" and len(cuda_rng) == world_size and cuda_rng[rank].numel():
            torch.cuda.set_rng_state(cuda_rng[rank])


def checkpoint_dict(state: TrainState, cfg: TrainConfig, runtime: Runtime) -> dict | None:
    """The nanoGPT dict plus what exact resume needs; gathered on every rank, returned on rank 0."""
    world_size = runtime.world_size
    data_rng = all_gather(state.batches.stream_states(), world_size)
    torch_rng = all_gather(state.batches.torch_rng_state(), world_size)
    on_cuda = state.meta["device_type"] == "cuda"
    cuda_rng = all_gather(torch.cuda.get_rng_state() if on_cuda else torch.empty(0, dtype=torch.uint8), world_size)
    model_sd, optim_sd = full_state(state.model, state.optimizer)  # FSDP: every rank sends its shards to rank 0
    if runtime.rank != 0:
        return None
    return {
        "model": clean_state_dict(model_sd),
        "optimizer": optim_sd,
        **model_entries(state.model.config),
        "iter_num": state.iter_num,
        "best_val_loss": float(state.best_val_loss),
        "config": to_dict(cfg),
        "resume": {
            "data_rng": [s for rank_states in data_rng for s in rank_states],  # index = global micro-step
            "torch_rng": torch_rng,
            "cuda_rng": cuda_rng,
            "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else {},
            "skipped_steps": int(state.skipped_steps),
            "wandb_run_id": state.wandb_run_id,
            "num_workers": world_size,
            "skip_iters": sorted(state.skip_iters),
            "lr_scale": state.lr_scale,
        },
    }


def report_with_checkpoint(state: TrainState, cfg: TrainConfig, runtime: Runtime, metrics: dict) -> None:
    """Every rank calls this; rank 0 writes the checkpoint once, the runtime persists it, then out_dir gets it.

    The bytes are written once, into a temporary folder inside out_dir: the runtime persists that folder
    (under Ray, to local storage by hard links, see cluster/train.py), and out_dir/ckpt.pt is the same file
    renamed into place. At GPT-2 scale a copy per place would cost ~1.5 GB per save."""
    ckpt = checkpoint_dict(state, cfg, runtime)
    tmp_dir = temp_name_beside(os.path.join(cfg.out_dir, CKPT_NAME)) if runtime.rank == 0 else None
    try:
        if tmp_dir:
            os.makedirs(tmp_dir)
            save_checkpoint(ckpt, os.path.join(tmp_dir, CKPT_NAME))
        runtime.report(metrics, checkpoint_dir=tmp_dir)
        if tmp_dir:
            runtime.wait_committed()  # out_dir/ckpt.pt appears only once the runtime has the same checkpoint
            # the latest good checkpoint also lands in out_dir, so `sample --init_from=resume` works as in
            # nanoGPT; a rename, so a kill leaves the old checkpoint or the new one, never half of one
            move_into_place(os.path.join(tmp_dir, CKPT_NAME), os.path.join(cfg.out_dir, CKPT_NAME))
    finally:
        if tmp_dir:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def recover_from_nonfinite(state: TrainState, cfg: TrainConfig, runtime: Runtime, bad_iter: int, value: float) -> None:
    """Roll back to the latest checkpoint, past the offending batches and at a lower lr if so configured;
    or fail in one line once max_nan_rollbacks are spent (retrying the run cannot help)."""
    state.nan_rollbacks += 1
    if state.nan_rollbacks > cfg.max_nan_rollbacks:
        raise NonFiniteLossError(f"loss is {value} at iteration {bad_iter}; rolled back {state.nan_rollbacks - 1} times "
                                 f"(max_nan_rollbacks={cfg.max_nan_rollbacks}); lower learning_rate or check the data")
    rollback(state, cfg, runtime, bad_iter)
    what = []
    if cfg.nan_skip_batches:
        state.skip_iters.add(bad_iter)
        what.append(f"skipping the batches of iteration {bad_iter}")
    if cfg.nan_lr_scale != 1.0:
        state.lr_scale *= cfg.nan_lr_scale
        what.append(f"lr x{state.lr_scale:g}")
    log(runtime, f"loss is {value} at iteration {bad_iter}: rolled back to iteration {state.iter_num} "
                 f"({state.nan_rollbacks}/{cfg.max_nan_rollbacks}){': ' + ', '.join(what) if what else ''}")


def rollback(state: TrainState, cfg: TrainConfig, runtime: Runtime, bad_iter: int) -> None:
    """After a non-finite loss: weights, optimizer and data streams back to the latest checkpoint."""
    source = runtime.latest_checkpoint_dir(cfg.out_dir)
    if source is None:
        raise NonFiniteLossError(f"loss is not finite at iteration {bad_iter} and there is no checkpoint to roll back to; "
                                 "lower learning_rate or check the data")
    ckpt = load_checkpoint(source, map_location="cpu")
    load_full_state(state.model, None, clean_state_dict(ckpt["model"]), None)
    restore(state, ckpt, cfg, runtime)
    state.batches.prime()  # nanoGPT order: the checkpoint's batch in hand, drawn again from the restored generator
    state.iter_num, state.best_val_loss = int(ckpt["iter_num"]), float(ckpt["best_val_loss"])
    state.optimizer.zero_grad(set_to_none=True)


def eval_batches(cfg: TrainConfig, data, split: str, device: str, runtime: Runtime, sharded: bool):
    """(X, Y, counted) of the eval batches this rank runs. 'nanogpt' order: rank 0 draws eval_iters batches from
    torch's global generator, as nanoGPT's estimate_loss on the master process; 'worker_invariant': batch j from a
    generator of its own, on rank j % world_size. FSDP's forward all-gathers each block's weights, a collective,
    so there every rank runs as many forwards: the spare ones are not counted."""
    rank, ws = runtime.rank, runtime.world_size
    if cfg.data_order == "nanogpt":
        spare = torch.zeros(cfg.batch_size, cfg.block_size, dtype=torch.long, device=device)
        for _ in range(cfg.eval_iters if rank == 0 or sharded else 0):
            if rank == 0:
                yield (*get_batch(data, cfg.batch_size, cfg.block_size, None, device), True)
            else:
                yield spare, spare, False
        return
    stop = -(-cfg.eval_iters // ws) * ws if sharded else cfg.eval_iters
    for j in range(rank, stop, ws):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + (1 if split == "val" else 0) * 7_919 + j % cfg.eval_iters)
        yield (*get_batch(data, cfg.batch_size, cfg.block_size, g, device), j < cfg.eval_iters)


@torch.no_grad()
def estimate_loss(model, cfg: TrainConfig, splits: dict, ctx, device: str, runtime: Runtime) -> dict:
    """Mean loss over eval_iters batches per split (see eval_batches), the same on every rank."""
    out = {}
    model.eval()
    for split, data in splits.items():
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        for X, Y, counted in eval_batches(cfg, data, split, device, runtime, is_sharded(model)):
            with ctx:
                _, loss = model(X, Y)
            if counted:
                totals[0] += loss.double()
                totals[1] += 1
        all_reduce_sum(totals, runtime.world_size)
        out[split] = (totals[0] / totals[1]).item()
    model.train()
    return out


def setup_device(cfg: TrainConfig, runtime: Runtime):
    """(device, device_type, dtype, autocast context, CPU threads) of this worker; logged once."""
    device = runtime.device(cfg.device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(device)
        enable_tf32()
    dtype = resolve_dtype(cfg.dtype, device)
    threads = runtime.cpu_threads(cfg.cpus_per_worker) if device_type == "cpu" else torch.get_num_threads()
    log(runtime, f"{runtime.world_size} worker(s), {threads} CPU thread(s) each, device {device}, dtype {dtype}, "
                 f"{cfg.parallelism if runtime.world_size > 1 else 'no'} parallelism")
    return device, device_type, dtype, autocast_context(device, dtype), threads


def mark_startup(cfg: TrainConfig, runtime: Runtime, phase: str) -> None:
    """--verbose: seconds since the command started (NANOGPT_RAY_T0, set by the launcher), phase by phase."""
    if cfg.verbose and runtime.rank == 0:
        t0 = float(os.environ.get(STARTUP_T0_ENV) or PROCESS_T0)
        print(f"[startup {time.time() - t0:7.2f} s] {phase}", flush=True)


def load_data(cfg: TrainConfig, data_dir: str) -> dict:
    splits = {split: load_split(data_dir, split) for split in ("train", "val")}
    for split, data in splits.items():
        check_block_size(data, cfg.block_size, os.path.join(data_dir, f"{split}.bin"))
    return splits


def check_vocab(cfg: TrainConfig, splits: dict, vocab_size: int) -> None:
    """Once the model exists: a token id past its vocabulary is one line here, not an IndexError mid-step
    (a bare or torchrun run has no pre-flight to catch it)."""
    for split, data in splits.items():
        check_token_ids(data, vocab_size, os.path.join(cfg.dataset_dir(), f"{split}.bin"))


def init_wandb(cfg: TrainConfig, state: TrainState, runtime: Runtime):
    if not (cfg.wandb_log and runtime.rank == 0):
        return None
    import wandb

    state.wandb_run_id = state.wandb_run_id or uuid.uuid4().hex[:8]
    return wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=to_dict(cfg),
                      id=state.wandb_run_id, resume="allow", dir=cfg.out_dir)


# ----------------------------------------------------------------------------- the loop

def train(config: dict, runtime: Runtime) -> Runtime:
    """nanoGPT's train.py body; `runtime` says how this process was launched.

    Longer than our ~120-line rule on purpose: like nanoGPT's train.py it reads top to bottom in one place
    (setup, then the loop); every piece that is not the loop itself is a function above."""
    cfg = from_dict(TrainConfig, config)
    rank, world_size = runtime.rank, runtime.world_size
    master_process = rank == 0
    if cfg.gradient_accumulation_steps % world_size != 0:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must divide by the "
                         f"{world_size} workers")
    m = cfg.gradient_accumulation_steps // world_size  # micro-steps on this worker
    tokens_per_iter = cfg.tokens_per_iter()
    log(runtime, f"tokens per iteration will be: {tokens_per_iter:,} "
                 f"({cfg.gradient_accumulation_steps} micro-steps x {cfg.batch_size} x {cfg.block_size}; "
                 f"{world_size} workers x {m} each)")
    if master_process:
        os.makedirs(cfg.out_dir, exist_ok=True)
        for path in remove_stale_partials(cfg.out_dir):  # what a writer killed mid-save left behind
            log(runtime, f"removed {path}, left by a writer that was killed mid-save")

    # ------------------------------------------------------------------ device, precision
    mark_startup(cfg, runtime, "worker started, process group up")
    device, device_type, dtype, ctx, threads = setup_device(cfg, runtime)
    torch.manual_seed(cfg.seed + rank)  # dropout differs per rank, as nanoGPT's seed_offset

    # ------------------------------------------------------------------ data
    data_dir = local_dataset_dir(cfg.dataset_dir())  # a URI: this node's cached copy, one download per node
    splits = load_data(cfg, data_dir)
    mark_startup(cfg, runtime, "data mapped")
    my_streams = range(rank * m, rank * m + m)  # the global micro-steps this worker runs (worker_invariant order)

    # ------------------------------------------------------------------ model init
    # after a worker failure (or a rerun of the same run) the runtime hands back the latest checkpoint
    ckpt_source = runtime.restored_checkpoint_dir()
    if ckpt_source is None and cfg.init_from == "resume":
        ckpt_source = cfg.out_dir
    ckpt = load_checkpoint(ckpt_source, map_location="cpu") if ckpt_source else None
    if ckpt is not None:
        log(runtime, f"resuming from iteration {ckpt['iter_num']} ({ckpt_source})")
    meta = read_meta(data_dir)
    model = build_model(cfg, ckpt, meta, runtime)
    model.to(device)
    check_vocab(cfg, splits, model.config.vocab_size)
    model = shard_model(model, cfg.parallelism, world_size, device, dtype)  # FSDP2: before the optimizer sees it
    state = TrainState(
        model=model,
        optimizer=model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type,
                                             cfg.optimizer, cfg.muon_lr, cfg.muon_momentum),
        scaler=torch.amp.GradScaler(device_type, enabled=(dtype == "float16")),  # loss scaling only for fp16
        batches=(NanoGPTBatches(splits["train"], cfg.batch_size, cfg.block_size, device, m) if cfg.data_order == "nanogpt"
                 else MicroStepBatches(splits["train"], cfg.batch_size, cfg.block_size, device, cfg.seed, my_streams)),
        meta=dict(device_type=device_type),
    )
    if ckpt is not None:
        state.iter_num = state.resumed_from = int(ckpt["iter_num"])
        state.best_val_loss = float(ckpt["best_val_loss"])
        resume = ckpt.get("resume", {})
        state.wandb_run_id = resume.get("wandb_run_id")
        state.skip_iters, state.lr_scale = set(resume.get("skip_iters", [])), float(resume.get("lr_scale", 1.0))
        if "optimizer" in ckpt:
            restore(state, ckpt, cfg, runtime)
    ckpt = None  # free memory
    mark_startup(cfg, runtime, "model built")

    if cfg.compile:
        log(runtime, "compiling the model... (takes a ~minute)")
        model = torch.compile(model)
    model = data_parallel(model, world_size, device)  # DDP with several workers, unless FSDP sharded it
    eval_model = unwrap_ddp(model)
    wandb_run = init_wandb(cfg, state, runtime)
    run_info = dict(node_ids=sorted(set(all_gather(runtime.node_id(), world_size))), world_size=world_size,
                    node_id=runtime.node_id(), tokens_per_iter=tokens_per_iter, cpu_threads=threads)

    # ------------------------------------------------------------------ training loop
    nonfinite = NonFiniteWatch(device)
    state.batches.prime()  # nanoGPT fetches the first batch before the loop, so before the first eval
    local_iter_num = 0
    running_mfu = -1.0
    step_time, steps_timed = 0.0, 0  # training time since the last log line (eval and reports left out)
    while True:
        lr = get_lr(state.iter_num, cfg) * state.lr_scale
        for param_group in state.optimizer.param_groups:  # Muon's groups keep their ratio to learning_rate
            param_group["lr"] = lr * param_group.get("lr_ratio", 1.0)
        info = dict(run_info, iter=state.iter_num, resumed_from=state.resumed_from, nan_rollbacks=state.nan_rollbacks)

        # evaluate, report and checkpoint at eval_interval and at the end (every rank takes part)
        at_end = state.iter_num >= cfg.max_iters
        if state.iter_num % cfg.eval_interval == 0 or at_end or cfg.eval_only:
            losses = estimate_loss(eval_model, cfg, splits, ctx, device, runtime)
            log(runtime, f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if local_iter_num == 0:
                mark_startup(cfg, runtime, f"eval at iteration {state.iter_num} done")
            improved = losses["val"] < state.best_val_loss
            state.best_val_loss = min(state.best_val_loss, losses["val"])
            # nothing new to save at iteration 0 or right after a resume (the checkpoint just loaded is this one)
            save = state.iter_num > state.resumed_from and not cfg.eval_only and (improved or cfg.always_save_checkpoint)
            metrics = dict(info, train_loss=losses["train"], val_loss=losses["val"], best_val_loss=state.best_val_loss, lr=lr)
            if wandb_run is not None:
                wandb_run.log({"iter": state.iter_num, "train/loss": losses["train"], "val/loss": losses["val"],
                               "lr": lr, "mfu": running_mfu * 100}, step=state.iter_num)
            if save:
                report_with_checkpoint(state, cfg, runtime, metrics)
                log(runtime, f"saved checkpoint at iteration {state.iter_num} to {cfg.out_dir}")
            else:
                runtime.report(metrics)
        if cfg.eval_only or at_end:
            break

        # forward/backward with gradient accumulation; grads sync across ranks only on the last micro-step
        t_iter = time.time()
        loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
        if state.iter_num in state.skip_iters:  # these batches made the loss non-finite: move past them
            state.batches.skip_iteration()
        X, Y = state.batches.first()
        for micro_step in range(m):
            set_grad_sync(model, micro_step == m - 1)  # one gradient sync per iteration (not m), on the last
            with ctx:
                _, loss = model(X, Y)
                loss = runtime.on_loss(loss, state.iter_num, micro_step, X)
                loss_sum += loss.detach().double()
                loss = loss / m  # DDP and FSDP average over ranks, so the gradient is the mean over all micro-steps
            if micro_step < m - 1 or state.batches.prefetches_next_iteration:
                # fetch the next micro-batch while the accelerator is still busy with this backward pass
                X, Y = state.batches.next()
            state.scaler.scale(loss).backward()
        # the iteration's mean loss over every rank (all ranks agree on it), left on the device: reading it here
        # would make the host wait for the GPU every iteration, which nanoGPT pays only at log_interval
        loss_mean = all_reduce_sum(loss_sum, world_size) / cfg.gradient_accumulation_steps
        nonfinite.note(loss_mean, state.iter_num)
        if cfg.grad_clip != 0.0:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
        optimizer_step(state)
        state.optimizer.zero_grad(set_to_none=True)  # free the gradients' memory now

        state.iter_num += 1
        local_iter_num += 1
        if device_type == "cuda" and state.iter_num % cfg.log_interval == 0:
            torch.cuda.synchronize()  # the GPU may still run queued steps: time them too, not just the queueing
        step_time += time.time() - t_iter
        steps_timed += 1
        # the non-finite check, at the host syncs the loop makes anyway: each log line, and before each eval
        # (so a checkpoint never holds a non-finite step) and the end
        sync_point = state.iter_num % cfg.log_interval == 0 or state.iter_num % cfg.eval_interval == 0
        bad = nonfinite.read() if sync_point or state.iter_num >= cfg.max_iters else None
        if bad is not None:
            recover_from_nonfinite(state, cfg, runtime, *bad)
            step_time, steps_timed = 0.0, 0
            continue
        if state.iter_num % cfg.log_interval == 0:
            loss_value = loss_mean.item()
            dt = step_time / steps_timed  # mean seconds per training iteration since the last log line
            step_time, steps_timed = 0.0, 0
            if local_iter_num >= 5:  # let the first iterations (compile, warm-up) pass
                mfu = state.model.estimate_mfu(cfg.batch_size * m, dt, default_peak_flops(device))  # cached
                running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
            tokens_per_s = tokens_per_iter / dt
            if local_iter_num == cfg.log_interval:
                mark_startup(cfg, runtime, f"iteration {state.iter_num} logged (the first log line)")
            eta_s = (cfg.max_iters - state.iter_num) * dt
            log(runtime, f"iter {state.iter_num}: loss {loss_value:.4f}, time {dt * 1000:.2f}ms, {tokens_per_s:,.0f} tok/s, "
                         f"mfu {running_mfu * 100:.2f}%, lr {lr:.2e}, eta {eta_s / 60:.1f}min")
            if wandb_run is not None:
                wandb_run.log({"iter": state.iter_num, "train/step_loss": loss_value, "lr": lr,
                               "tokens_per_s": tokens_per_s, "ms_per_iter": dt * 1000}, step=state.iter_num)
            if state.iter_num % cfg.eval_interval != 0 and state.iter_num < cfg.max_iters:  # eval reports those
                runtime.report(dict(info, iter=state.iter_num, loss=loss_value, lr=lr, ms_per_iter=dt * 1000,
                                    tokens_per_s=tokens_per_s, mfu=running_mfu, eta_s=eta_s,
                                    skipped_steps=int(state.skipped_steps)))

    if wandb_run is not None:
        wandb_run.finish()
    return runtime


def run_bare(config: dict | TrainConfig) -> Runtime:
    """The same loop in this process, no Ray: one worker, or every rank under
    `torchrun --nproc_per_node=N -m nanogpt_ray.train_loop <config files> --key=value`."""
    if isinstance(config, TrainConfig):
        config = to_dict(config)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():  # torchrun: under Ray, TorchTrainer does this
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    runtime = Runtime()
    if runtime.rank == 0:
        print(f"training without Ray in process {os.getpid()}", file=sys.stderr)
    return train(config, runtime)


if __name__ == "__main__":
    # Without Ray: python -m nanogpt_ray.train_loop configs/train_shakespeare_char_cpu.py --max_iters=100
    from .config import load_config, split_args

    files, overrides = split_args(sys.argv[1:])
    run_bare(load_config(TrainConfig, files, overrides))
