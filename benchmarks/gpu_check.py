"""GPU acceptance check: one table, one exit code, and every row able to fail. Needs torch and numpy, not Ray:
the training loop runs in plain processes, as under torchrun.

On a GPU machine, from the repository root:

    python benchmarks/gpu_check.py 2>&1 | tee gpu_check.txt   # GPT-2 124M shape, ctx 1024, bf16, compiled
    python benchmarks/gpu_check.py --rows=learns --lr=0        # negative control: 'learns' must FAIL, exit 1

On a lent machine with a time limit per command, lower the per-row limit, e.g. `--timeout=150`.
And anywhere, the same rows on a tiny shape (tests/unit/test_gpu_check_script.py runs this with --compile=False):

    python benchmarks/gpu_check.py --device=cpu --tiny
    python benchmarks/gpu_check.py --smoke                     # two rows of that, in seconds

Each row runs in its own process, killed after --timeout seconds: a hang is a FAIL that names the row. A row is
PASS, FAIL, or UNCHECKED (it could not be judged here, and says why: that is not a pass). Exit code: 1 if any row
failed, else 0; 2 for bad arguments or no GPU.

  learns    the training loop (train_loop.run_bare), --dtype, compiled, on a random sequence of PERIOD distinct
            tokens repeated (each token fixes the next, so the loss floor is 0): the val loss must end below
            LOSS_BOUND after --iters iterations (it starts near ln(vocab)).
  MFU       synchronized steady training step (forward, backward, clip, AdamW) of the compiled model: MFU against
            the device's data-sheet peak (device.peak_flops_for_device) above the floor of its class (MFU_FLOORS)
            and below 100%. A GPU the table does not know: UNCHECKED, with its TFLOP/s. CPU: against the measured
            fp32 matmul peak, below 100%.
  compile   compile time (the first compiled step less a steady one, caches empty), and the compiled steady
            step no slower than eager (at most COMPILE_SLOWDOWN x).
  fp16      the loop in float16 with GradScaler on the same task (eager): the scaler's final scale, the steps
            it skipped after WARMUP iterations (at most FP16_MAX_SKIPS), the val loss below LOSS_BOUND.
  DDP       2 ranks, each 2 micro-steps (grad sync on the last only, as the loop does), gradients equal to one
            process accumulating the 4 micro-batches within GRAD_TOL. >= 2 GPUs: NCCL, one GPU per rank;
            CPU: gloo; 1 GPU: gloo with both ranks on it, and UNCHECKED (NCCL across ranks needs 2 GPUs).
  sampling  engine.generate with its KV cache: tokens/s at batch 1 and 16; batch 16 >= BATCH_GAIN x batch 1
            (GPU 4x, CPU 1.5x).
  serving   the engine's ContinuousBatcher fed by CLIENTS client threads (no Ray, no HTTP): tokens/s of
            CLIENTS clients >= BATCH_GAIN x one client's, every request finished with its tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nanogpt_ray.device import autocast_context, measure_matmul_flops, peak_flops_for_device  # noqa: E402


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab: int  # tokens the task draws from (a BPE-sized vocabulary is padded to a multiple of 64, as nanoGPT's)
    iters: int  # learns and fp16 iterations
    lr: float
    new_tokens: int  # sampling and serving: tokens generated per request


GPT2_124M = Shape(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, vocab=50257, iters=300, lr=6e-4,
                  new_tokens=200)
TINY = Shape(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8, vocab=256, iters=40, lr=1e-2, new_tokens=16)

PERIOD = 256  # distinct tokens in the repeated sequence
LOSS_BOUND = 1.0  # val loss the learning rows must end below (floor 0, start ~ln(vocab))
WARMUP = 20  # lr warm-up iterations; fp16's scaler finds its scale in them
FP16_MAX_SKIPS = 2  # GradScaler steps skipped after WARMUP (its scale grows only every 2000 steps)
COMPILE_SLOWDOWN = 1.05  # compiled steady step / eager steady step, at most (timing noise)
GRAD_TOL = {"float32": 1e-4, "bfloat16": 1e-2, "float16": 1e-2}  # relative gradient error, DDP vs one process
# batch 16 (or CLIENTS clients) over batch 1 (one client), tokens/s, at least; a shared CPU's timings are noisy
BATCH_GAIN = {"cuda": 4.0, "cpu": 1.5}  # serving one request at a time would give 1x
CLIENTS = 16
PROMPT_TOKENS = 16
# the lowest MFU accepted at the GPT-2 124M shape, by device class: set to catch a broken path (an fp32
# fallback, no tensor cores, a host sync per kernel), not to grade tuning; the first pattern found wins
MFU_FLOORS = (
    (r"\b(GB200|B200|GH200|H200|H100|H800)\b", 0.20),
    (r"\b(A100|A800)\b", 0.25),
    (r".", 0.10),  # every other GPU the peak table knows
)
SMOKE_ROWS = ("learns", "sampling")  # --smoke: the script's plumbing and one table, in seconds
ROWS = {"learns": "learns", "mfu": "MFU", "compile": "compile", "fp16": "fp16 + GradScaler", "ddp": "DDP, 2 ranks",
        "sampling": "KV-cache sampling", "serving": f"serving, {CLIENTS} clients"}


class Row(Exception):
    """A row's verdict, raised from anywhere inside it: status PASS, FAIL or UNCHECKED, and its figures."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def verdict(ok: bool, detail: str) -> Row:
    return Row("PASS" if ok else "FAIL", detail)


def finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


# ----------------------------------------------------------------------------- shared pieces

def write_repeat_task(folder: pathlib.Path, vocab: int, seed: int = 0) -> None:
    """A prepared dataset: PERIOD distinct random tokens repeated, so each token fixes the next (loss floor 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    sequence = np.random.default_rng(seed).choice(vocab, size=PERIOD, replace=False).astype(np.uint16)
    np.resize(sequence, 200 * PERIOD).tofile(folder / "train.bin")
    np.resize(np.roll(sequence, 7), 50 * PERIOD).tofile(folder / "val.bin")  # the same sequence, other windows
    (folder / "meta.json").write_text(json.dumps({"vocab_size": vocab, "tokenizer": "synthetic", "dtype": "uint16"}))


def train_config(args, name: str, **overrides):
    from nanogpt_ray.config import TrainConfig

    s = args.shape
    values = dict(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, block_size=s.block_size,
                  batch_size=args.batch_size, dataset="repeat", data_root=str(args.work / "data"),
                  out_dir=str(args.work / name), gradient_accumulation_steps=1, max_iters=args.iters,
                  eval_interval=max(1, args.iters // 2), eval_iters=4, log_interval=10, learning_rate=args.lr,
                  min_lr=args.lr / 10, warmup_iters=WARMUP, lr_decay_iters=args.iters, decay_lr=True,
                  always_save_checkpoint=True, dropout=0.0, bias=False, device=args.device, dtype=args.dtype,
                  compile=args.compile)
    values.update(overrides)
    return TrainConfig(**values)


def loop_figures(history: list[dict]) -> tuple[list[float], list[float], str]:
    """(val losses, logged train losses, the loop's own median ms/iter past the first log line)."""
    vals = [h["val_loss"] for h in history if "val_loss" in h]
    logs = [h for h in history if "loss" in h]
    steady = [h["ms_per_iter"] for h in logs[1:]]
    ms = f"loop {statistics.median(steady):.1f} ms/iter" if steady else "loop ms/iter: no steady log line"
    return vals, [h["loss"] for h in logs], ms


def new_model(args, seed: int = 0):
    from nanogpt_ray.model import GPT, GPTConfig
    from nanogpt_ray.tokenizer import model_vocab_size

    s = args.shape
    torch.manual_seed(seed)
    config = GPTConfig(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, block_size=s.block_size, bias=False,
                       vocab_size=model_vocab_size({"vocab_size": s.vocab, "tokenizer": "synthetic"}), dropout=0.0)
    return GPT(config).to(args.device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed_steps(args, compiled: bool, warmup: int, steps: int) -> tuple[object, float, list[float]]:
    """(model, seconds of the first step, seconds of each of `steps` steady steps): a training step on one
    fixed batch, synchronized before and after, so the GPU's queue cannot hide in the figure."""
    model = new_model(args)
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    optimizer = model.configure_optimizers(0.1, args.lr, (0.9, 0.95), device_type)
    run = torch.compile(model) if compiled else model
    g = torch.Generator().manual_seed(0)
    X, Y = (torch.randint(0, args.shape.vocab, (args.batch_size, args.shape.block_size), generator=g).to(args.device)
            for _ in range(2))
    ctx = autocast_context(args.device, args.dtype)

    def step() -> float:
        sync(args.device)
        t0 = time.perf_counter()
        with ctx:
            _, loss = run(X, Y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        return time.perf_counter() - t0

    first = step()
    for _ in range(warmup):
        step()
    return model, first, [step() for _ in range(steps)]


def timing_counts(args) -> tuple[int, int]:
    return (3, 10) if args.tiny else (10, 30)


# ----------------------------------------------------------------------------- the rows

def row_learns(args):
    from nanogpt_ray.train_loop import run_bare

    vals, losses, ms = loop_figures(run_bare(train_config(args, "learns")).history)
    below = f"below {LOSS_BOUND} (floor 0)"
    detail = f"val loss {vals[0]:.2f} -> {vals[-1]:.3f} in {args.iters} iters at lr {args.lr:g}, must end {below}; {ms}"
    raise verdict(finite(vals + losses) and vals[-1] < LOSS_BOUND, detail)


def mfu_floor(device_name: str) -> float:
    return next(floor for pattern, floor in MFU_FLOORS if re.search(pattern, device_name, re.IGNORECASE))


def row_mfu(args):
    warmup, steps = timing_counts(args)
    model, _, times = timed_steps(args, args.compile, warmup, steps)
    dt = statistics.median(times)
    achieved = model.flops_per_token() * args.shape.block_size * args.batch_size / dt
    what = f"{dt * 1000:.1f} ms/step ({'compiled' if args.compile else 'eager'}, median of {steps}), " \
           f"{achieved / 1e12:.3g} TFLOP/s"
    if not args.device.startswith("cuda"):
        peak = measure_matmul_flops("cpu")
        mfu = achieved / peak
        raise verdict(0 < mfu < 1, f"{what}; MFU {mfu * 100:.1f}% of the measured fp32 matmul peak "
                                   f"({peak / 1e9:.0f} GFLOP/s; CPUs: no floor), must be < 100%")
    name = torch.cuda.get_device_name(args.device)
    peak = peak_flops_for_device(name)
    if peak is None:
        raise Row("UNCHECKED", f"{what}; '{name}' has no data-sheet peak in device.PEAK_FLOPS: MFU not judged")
    mfu, floor = achieved / peak, mfu_floor(name)
    raise verdict(floor < mfu < 1, f"{what}; MFU {mfu * 100:.1f}% of {peak / 1e12:.0f} TFLOP/s, "
                                   f"must be in ({floor * 100:.0f}%, 100%)")


def row_compile(args):
    if not args.compile:
        raise Row("UNCHECKED", "--compile=False")
    warmup, steps = timing_counts(args)
    _, eager_first, eager = timed_steps(args, False, warmup, steps)
    _, compiled_first, compiled = timed_steps(args, True, warmup, steps)
    e, c = statistics.median(eager), statistics.median(compiled)
    raise verdict(c <= COMPILE_SLOWDOWN * e,
                  f"compile {compiled_first - c:.1f} s; steady step compiled {c * 1000:.2f} ms vs eager {e * 1000:.2f} ms "
                  f"({c / e:.2f}x, must be <= {COMPILE_SLOWDOWN})")


def row_fp16(args):
    from nanogpt_ray.checkpoint import CKPT_NAME
    from nanogpt_ray.train_loop import run_bare

    history = run_bare(train_config(args, "fp16", dtype="float16", compile=False)).history
    vals, losses, ms = loop_figures(history)
    resume = torch.load(args.work / "fp16" / CKPT_NAME, map_location="cpu", weights_only=True)["resume"]
    skipped = resume["skipped_steps"]
    past_warmup = [h for h in history if "skipped_steps" in h and h["iter"] >= WARMUP]
    if not past_warmup:
        raise Row("FAIL", f"--iters={args.iters} leaves no log line past the {WARMUP}-iteration warm-up")
    after = skipped - past_warmup[0]["skipped_steps"]
    ok = finite(vals + losses) and vals[-1] < LOSS_BOUND and after <= FP16_MAX_SKIPS
    raise verdict(ok, f"final scale {resume['scaler']['scale']:g}; steps skipped {skipped} ({after} after iteration "
                      f"{past_warmup[0]['iter']}, must be <= {FP16_MAX_SKIPS}); val loss {vals[0]:.2f} -> {vals[-1]:.3f}, "
                      f"must end below {LOSS_BOUND}; {ms}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def row_ddp(args):
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    backend = "nccl" if gpus >= 2 else "gloo"
    result = args.work / "ddp-rank0.json"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    ranks = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--row=ddp-rank", f"--backend={backend}"],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in range(2)]
    codes = [rank.wait() for rank in ranks]  # a hang is caught by the row's timeout, which kills the ranks too
    if any(codes) or not result.exists():
        raise Row("FAIL", f"ranks exited {codes}")
    r = json.loads(result.read_text())
    tol = GRAD_TOL[args.dtype]
    where = {"nccl": "NCCL, one GPU per rank", "gloo": "gloo on cuda:0" if gpus == 1 else "gloo on CPU"}[backend]
    detail = (f"{where}: gradient error vs one process {r['error']:.1e} (tolerance {tol:g}; "
              f"rank 0's micro-batches alone: {r['alone']:.2f})")
    if r["error"] > tol:
        raise Row("FAIL", detail)
    if gpus == 1:
        raise Row("UNCHECKED", detail + "; NCCL across ranks could not be checked: 1 GPU")
    raise Row("PASS", detail)


def ddp_rank(args) -> None:
    """One rank of the DDP row: an iteration through the loop's DDP wrapper, then (rank 0) the same micro-batches
    accumulated in one process, and the relative gradient error between the two."""
    import torch.distributed as dist

    from nanogpt_ray.parallel import data_parallel, set_grad_sync

    rank = int(os.environ["RANK"])
    device = f"cuda:{rank}" if args.backend == "nccl" else args.device if args.device == "cpu" else "cuda:0"
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # before NCCL starts: each rank's communicator on its own GPU
    dist.init_process_group(args.backend)
    world, m = dist.get_world_size(), 2
    args.device = device
    ctx = autocast_context(device, args.dtype)
    batches = []
    for k in range(world * m):  # global micro-batch k, the same on every rank
        g = torch.Generator().manual_seed(k)
        batches.append([torch.randint(0, args.shape.vocab, (args.batch_size, args.shape.block_size), generator=g)
                        .to(device) for _ in range(2)])

    def accumulate(model, micro_batches, sync_last=None):
        for i, (X, Y) in enumerate(micro_batches):
            if sync_last is not None:
                set_grad_sync(sync_last, i == len(micro_batches) - 1)
            with ctx:
                _, loss = model(X, Y)
            (loss / len(micro_batches)).backward()
        return {n: p.grad.float() for n, p in getattr(model, "module", model).named_parameters()}

    model = new_model(args)
    ddp = data_parallel(model, world, device)
    grads = accumulate(ddp, batches[rank * m:rank * m + m], sync_last=ddp)
    if rank == 0:
        def error(got: dict, want: dict) -> float:  # the worst parameter's relative error
            return max(((got[n] - g).norm() / g.norm().clamp_min(1e-30)).item() for n, g in want.items())

        reference = accumulate(new_model(args), batches)
        alone = accumulate(new_model(args), batches[:m])  # what a missing all-reduce would leave on rank 0
        (args.work / "ddp-rank0.json").write_text(json.dumps({"error": error(grads, reference),
                                                              "alone": error(alone, reference)}))
    dist.barrier()
    dist.destroy_process_group()


def sampling_model(args):
    model = new_model(args).eval()
    return model, autocast_context(args.device, args.dtype), min(args.new_tokens, args.shape.block_size - PROMPT_TOKENS)


def row_sampling(args):
    from nanogpt_ray.engine import generate

    model, ctx, new = sampling_model(args)
    rates = {}
    for batch in (1, 16):
        prompt = torch.randint(0, args.shape.vocab, (batch, PROMPT_TOKENS), device=args.device)
        with ctx:
            generate(model, prompt, 4, top_k=200)  # warm-up
            sync(args.device)
            t0 = time.perf_counter()
            out = generate(model, prompt, new, top_k=200)
            sync(args.device)
        rates[batch] = batch * new / (time.perf_counter() - t0)
        if out.shape != (batch, PROMPT_TOKENS + new):
            raise Row("FAIL", f"batch {batch}: output shape {tuple(out.shape)}")
    gain, want = rates[16] / rates[1], BATCH_GAIN[args.device]
    raise verdict(gain >= want, f"{new} new tokens: batch 1 {rates[1]:,.0f} tok/s, batch 16 {rates[16]:,.0f} "
                                f"tok/s ({gain:.1f}x, must be >= {want:g}x)")


def row_serving(args):
    from nanogpt_ray.engine import ContinuousBatcher, Sequence

    model, ctx, new = sampling_model(args)
    batcher = ContinuousBatcher(model, args.device, ctx, max_batch_size=CLIENTS)
    stop = threading.Event()
    threading.Thread(target=batcher.run, args=(stop,), daemon=True).start()
    requests = 2 if args.tiny else 4
    problems = []

    def client(seed: int) -> None:
        for i in range(requests):
            tokens, done, reasons = [], threading.Event(), []
            prompt = torch.randint(0, args.shape.vocab, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(seed)).tolist()
            batcher.submit(Sequence(prompt, new, tokens.append, lambda reason: (reasons.append(reason), done.set()),
                                    top_k=200, seed=seed * 1000 + i, device=args.device))
            if not done.wait(args.timeout) or reasons != ["length"] or len(tokens) != new:
                problems.append(f"client {seed} request {i}: {reasons}, {len(tokens)} tokens")

    def throughput(clients: int) -> float:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return clients * requests * new / (time.perf_counter() - t0)

    throughput(1)  # warm-up
    one, many = throughput(1), throughput(CLIENTS)
    stop.set()
    gain, want = many / one, BATCH_GAIN[args.device]
    detail = (f"{requests} requests x {new} tokens per client: 1 client {one:,.0f} tok/s, {CLIENTS} clients "
              f"{many:,.0f} tok/s ({gain:.1f}x, must be >= {want:g}x)")
    if problems:
        raise Row("FAIL", f"{problems[0]} ({len(problems)} bad requests); {detail}")
    raise verdict(gain >= want, detail)


ROW_FUNCTIONS = {"learns": row_learns, "mfu": row_mfu, "compile": row_compile, "fp16": row_fp16, "ddp": row_ddp,
                 "sampling": row_sampling, "serving": row_serving}


def run_row_here(args) -> None:
    """The child process of one row: its verdict goes to <work>/<row>.json."""
    try:
        ROW_FUNCTIONS[args.row](args)
        row = Row("FAIL", "the row gave no verdict")
    except Row as verdict_:
        row = verdict_
    except Exception as e:  # a crash is a FAIL with its one line
        message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        row = Row("FAIL", f"{type(e).__name__}: {message}")
    (args.work / f"{args.row}.json").write_text(json.dumps({"status": row.status, "detail": row.detail}))


# ----------------------------------------------------------------------------- the driver

def run_row(args, name: str) -> tuple[str, str, float]:
    """One row in its own process group, killed whole (ranks included) after --timeout seconds."""
    env = dict(os.environ)
    # the compile row compiles with empty caches (an honest compile time); the others share one cache
    cache = args.work / ("cache-compile" if name == "compile" else "cache")
    env.update(TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"))
    log = args.work / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], f"--row={name}", f"--work={args.work}"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO)
        try:
            proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "FAIL", f"timed out after {args.timeout:g} s (a hang?); log: {log}", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    result = args.work / f"{name}.json"
    if not result.exists():
        lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
        return "FAIL", f"exit {proc.returncode}: {lines[-1][:300]}; log: {log}", seconds
    verdict_ = json.loads(result.read_text())
    return verdict_["status"], verdict_["detail"], seconds


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape (checks the script itself on a CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"--device=cpu --tiny --compile=False --rows={','.join(SMOKE_ROWS)} (seconds)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"),
                        help="the learns, MFU, compile, DDP and sampling rows (fp16 is its own row); default "
                             "bfloat16 on GPUs, float32 on CPUs (slow bf16 kernels: the unit tests cover bf16 there)")
    parser.add_argument("--iters", type=int, help="learns and fp16 iterations (default: the shape's)")
    parser.add_argument("--lr", type=float, help="learning rate of the learning rows (default: the shape's; 0 must FAIL)")
    parser.add_argument("--batch_size", type=int, help="sequences per step (default: the shape's)")
    parser.add_argument("--new_tokens", type=int, help="tokens per sampling/serving request (default: the shape's)")
    parser.add_argument("--compile", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                        help="torch.compile the model (default True; False leaves the compile row UNCHECKED)")
    parser.add_argument("--rows", help=f"comma-separated, from {','.join(ROWS)} (default: all)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per row before it is killed and FAILs")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.tiny, args.compile, args.rows = "cpu", True, False, args.rows or ",".join(SMOKE_ROWS)
    args.shape = TINY if args.tiny else GPT2_124M
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    for key in ("iters", "lr", "batch_size", "new_tokens"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(args.shape, key))
    args.rows = [r.strip() for r in (args.rows or ",".join(ROWS)).split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; rows are {', '.join(ROWS)}")
    if args.lr < 0 or args.iters < 1 or args.batch_size < 1 or args.new_tokens < 1 or args.timeout <= 0:
        parser.error("--lr must be >= 0; --iters, --batch_size, --new_tokens and --timeout must be > 0")
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device={args.device!r}: use cuda or cpu")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.row == "ddp-rank":
        args.work = pathlib.Path(args.work)
        ddp_rank(args)
        return 0
    if args.row:
        args.work = pathlib.Path(args.work)
        run_row_here(args)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: pass --device=cpu --tiny to check the script on a CPU", file=sys.stderr)
        return 2
    args.work = pathlib.Path(tempfile.mkdtemp(prefix="nanogpt-gpu-check-"))
    write_repeat_task(args.work / "data" / "repeat", args.shape.vocab)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    print(f"{time.strftime('%Y-%m-%d')}: {name} x{gpus}; torch {torch.__version__}; "
          f"{'tiny' if args.tiny else 'GPT-2 124M'} shape {args.shape}; dtype {args.dtype}; compile {args.compile}; "
          f"work dir {args.work}", flush=True)
    results = []
    for row in args.rows:
        status, detail, seconds = run_row(args, row)
        results.append((ROWS[row], status, detail, seconds))
        print(f"{ROWS[row]}: {status}: {detail} ({seconds:.0f} s)", flush=True)
    width = max(len(label) for label, *_ in results)
    print("\n| row | result | figures | s |\n|---|---|---|---|")
    for label, status, detail, seconds in results:
        print(f"| {label.ljust(width)} | {status} | {detail} | {seconds:.0f} |")
    counts = {s: sum(r[1] == s for r in results) for s in ("PASS", "FAIL", "UNCHECKED")}
    print(f"\n{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['UNCHECKED']} UNCHECKED (not a pass: see the row)")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
