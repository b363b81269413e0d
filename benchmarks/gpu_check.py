"""GPU acceptance check for a machine with torch and a GPU but no Ray: what only a GPU shows, in one table.

    python benchmarks/gpu_check.py                          # GPT-2 124M shape, ctx 1024, bf16 + compile
    python benchmarks/gpu_check.py --device=cpu --tiny      # the same checks on a tiny shape (CI runs this)

Rows (each PASS/FAIL with its figures; the exit code is 1 if any row fails):
1. train: the training loop without Ray (train_loop.run_bare) on random tokens for --iters iterations in
   bf16 (fp32 on CPU) with torch.compile: ms/iter, tokens/s, MFU against the device's data-sheet peak
   (device.default_peak_flops), loss finite and not rising (random tokens: it starts near ln(vocab)).
2. fp16: the same loop in float16 with GradScaler (GPUs only): loss finite, the scaler's scale recorded.
3. torchrun: `torchrun --nproc_per_node=<GPUs>` runs this script's child mode: NCCL (gloo on CPU) process
   group, an all_reduce checked against its expected sum, then a few loop iterations under DDP.
4. sample: KV-cache generation tokens/s at batch 1 and 16 (engine.generate, --new_tokens each).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from nanogpt_ray.bench import write_synthetic_dataset  # noqa: E402
from nanogpt_ray.config import PADDED_VOCAB_SIZE, TrainConfig  # noqa: E402

GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16)
TINY = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=4)


def train_config(args, work: pathlib.Path, name: str, **overrides) -> TrainConfig:
    shape = TINY if args.tiny else GPT2_124M
    values = dict(shape, dataset="random", data_root=str(work / "data"), out_dir=str(work / name),
                  gradient_accumulation_steps=1, max_iters=args.iters, eval_interval=10**9, eval_iters=2,
                  log_interval=max(1, args.iters // 10), warmup_iters=0, decay_lr=False, learning_rate=3e-4,
                  always_save_checkpoint=False, dropout=0.0, bias=False, device=args.device,
                  dtype="float32" if args.device == "cpu" else "bfloat16", compile=args.compile, backend="auto")
    values.update(overrides)
    return TrainConfig(**values)


def run_loop(cfg: TrainConfig) -> dict:
    from nanogpt_ray.train_loop import run_bare

    runtime = run_bare(cfg)
    logs = [h for h in runtime.history if "ms_per_iter" in h]
    evals = [h for h in runtime.history if "val_loss" in h]
    steady = logs[len(logs) // 2:] or logs  # past compile and warm-up
    ms = sorted(h["ms_per_iter"] for h in steady)[len(steady) // 2] if steady else float("nan")
    return {"ms_per_iter": ms, "tokens_per_s": cfg.tokens_per_iter() / (ms / 1000) if steady else 0.0,
            "mfu": steady[-1]["mfu"] if steady else -1.0, "first_loss": evals[0]["val_loss"],
            "last_loss": evals[-1]["val_loss"], "losses": [h["loss"] for h in logs]}


def check_train(args, work) -> tuple[bool, str]:
    r = run_loop(train_config(args, work, "train"))
    # random tokens: the loss starts at ~ln(vocab) and cannot go much lower; it must stay finite and not rise
    ok = all(map(lambda x: x == x and abs(x) != float("inf"), r["losses"])) and r["last_loss"] <= r["first_loss"] + 0.05
    return ok, (f"{r['ms_per_iter']:.1f} ms/iter, {r['tokens_per_s']:,.0f} tok/s, MFU {r['mfu'] * 100:.1f}%, "
                f"val loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}")


def check_fp16(args, work) -> tuple[bool, str]:
    if args.device == "cpu":
        return True, "skipped on CPU (GradScaler is a GPU path)"
    r = run_loop(train_config(args, work, "fp16", dtype="float16", compile=False, max_iters=min(args.iters, 50)))
    ok = r["last_loss"] <= r["first_loss"] + 0.05 and all(x == x for x in r["losses"])
    return ok, f"{r['ms_per_iter']:.1f} ms/iter, val loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}"


def check_torchrun(args, work) -> tuple[bool, str]:
    gpus = torch.cuda.device_count() if args.device != "cpu" else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", __file__,
           "--child", f"--device={args.device}", f"--work={work}"] + (["--tiny"] if args.tiny else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CHILD ")]
    if proc.returncode != 0 or not lines:
        return False, f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['no output'])[-1][:200]}"
    result = json.loads(lines[-1][len("CHILD "):])
    return result["ok"], f"{gpus} process(es), {result['backend']}, all_reduce {result['sum']} (want {result['want']})"


def child(args) -> None:
    """One torchrun rank: a checked all_reduce, then a few iterations of the loop (DDP when world > 1)."""
    import torch.distributed as dist

    backend = "nccl" if args.device != "cpu" else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu"
    value = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(value)
    want = world * (world + 1) / 2
    cfg = train_config(args, pathlib.Path(args.work), "torchrun", max_iters=5, compile=False,
                       gradient_accumulation_steps=world, device="cuda" if backend == "nccl" else "cpu")
    run_loop(cfg)
    if rank == 0:
        print("CHILD " + json.dumps({"ok": value.item() == want, "sum": value.item(), "want": want, "backend": backend}),
              flush=True)
    dist.destroy_process_group()


def check_sampling(args) -> tuple[bool, str]:
    from nanogpt_ray.engine import generate
    from nanogpt_ray.model import GPT, GPTConfig

    shape = TINY if args.tiny else GPT2_124M
    model = GPT(GPTConfig(**{k: shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size")},
                          vocab_size=PADDED_VOCAB_SIZE, bias=False)).to(args.device).eval()
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    figures = []
    for batch in (1, 16):
        prompt = torch.randint(0, 50257, (batch, 16), device=args.device)
        with torch.autocast(device_type="cuda" if args.device != "cpu" else "cpu", dtype=dtype,
                            enabled=args.device != "cpu"):
            generate(model, prompt, 4, top_k=200)  # warm-up
            if args.device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = generate(model, prompt, args.new_tokens, top_k=200)
            if args.device != "cpu":
                torch.cuda.synchronize()
        figures.append(batch * args.new_tokens / (time.perf_counter() - t0))
        assert out.shape == (batch, 16 + args.new_tokens)
    return all(f > 0 for f in figures), f"batch 1: {figures[0]:,.0f} tok/s, batch 16: {figures[1]:,.0f} tok/s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape (CPU check of the script itself)")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--new_tokens", type=int, default=200)
    parser.add_argument("--compile", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    if args.device != "cpu" and not torch.cuda.is_available():
        print("no CUDA GPU here: pass --device=cpu --tiny to check the script on a CPU", file=sys.stderr)
        return 2
    work = pathlib.Path(tempfile.mkdtemp(prefix="nanogpt-gpu-check-"))
    write_synthetic_dataset(str(work / "data" / "random"), seed=0)
    name = torch.cuda.get_device_name(0) if args.device != "cpu" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; shape {TINY if args.tiny else GPT2_124M}", flush=True)
    rows = []
    for label, check in (("train (bf16, compile)" if args.device != "cpu" else "train (fp32)", lambda: check_train(args, work)),
                         ("fp16 + GradScaler", lambda: check_fp16(args, work)),
                         ("torchrun DDP", lambda: check_torchrun(args, work)),
                         ("KV-cache sampling", lambda: check_sampling(args))):
        try:
            ok, detail = check()
        except Exception as e:  # a failing check is a row, not the end of the table
            ok, detail = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        rows.append((label, ok, detail))
        print(f"{label}: {'PASS' if ok else 'FAIL'}: {detail}", flush=True)
    width = max(len(label) for label, _, _ in rows)
    print("\n| check | result | figures |\n|---|---|---|")
    for label, ok, detail in rows:
        print(f"| {label.ljust(width)} | {'PASS' if ok else 'FAIL'} | {detail} |")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
