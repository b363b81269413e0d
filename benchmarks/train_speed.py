"""Training speed against what a nanoGPT user runs, side by side in one run, on nanoGPT's CPU quick start.

    .venv/bin/python benchmarks/train_speed.py                  # 2000 iterations each: bare, 1 worker, 2 workers
    .venv/bin/python benchmarks/train_speed.py --iters=300      # a quicker look

Every run is a separate command, timed from its launch as a person would time it:
- bare: `python -m nanogpt_ray.train_loop` — nanoGPT's train.py as we run it without Ray: a plain process with
  torch's default threads (what `python train.py` does).
- ray 1 worker: `nanogpt-ray train ... --num_workers=1` on a fresh local Ray cluster (the worker gets the node's
  CPUs and as many torch threads).
- ray 2 workers: `--num_workers=2`, the same global batch (accumulation 2 x batch 6 instead of 1 x 12).
Printed per run: steady ms/iter and tokens/s (median of the log lines after the first 10%), seconds from the
command to the first logged step, end-to-end wall time, final val loss; and the ratios against bare. With
--verbose, the 1-worker run's startup breakdown (`nanogpt-ray train --verbose=True`).
The config is nanoGPT's README quick start: train_shakespeare_char.py --device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

QUICKSTART = dict(  # nanoGPT README's CPU run of config/train_shakespeare_char.py
    dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=12, block_size=64, n_layer=4, n_head=4,
    n_embd=128, dropout=0.0, learning_rate=1e-3, min_lr=1e-4, beta2=0.99, warmup_iters=100, eval_iters=20,
    eval_interval=250, log_interval=10, always_save_checkpoint=False, device="cpu", dtype="float32", compile=False,
    bias=False,
)
ITER_LINE = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")
EVAL_LINE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
STARTUP_LINE = re.compile(r"\[startup +([\d.]+) s\] (.*)")


def prepare_data(data_root: pathlib.Path) -> None:
    if not (data_root / "shakespeare_char" / "train.bin").exists():
        subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", "prepare", "shakespeare_char",
                        f"--data_root={data_root}"], cwd=REPO, check=True)


def run(name: str, command: list[str], iters: int) -> dict:
    """Run one command, reading its log as it comes: first-step time, per-iteration times, final val loss."""
    env = dict(os.environ, RAY_ADDRESS="local")  # always a fresh local cluster, never one already running here
    t0 = time.time()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_step, step_ms, val_loss, startup, tail = None, [], None, [], []
    for line in proc.stdout:
        tail = (tail + [line])[-30:]
        if (m := ITER_LINE.search(line)) is not None:
            first_step = first_step if first_step is not None else time.time() - t0
            step_ms.append(float(m.group(2)))
        elif (m := EVAL_LINE.search(line)) is not None and int(m.group(1)) == iters:
            val_loss = float(m.group(3))
        elif (m := STARTUP_LINE.search(line)) is not None:
            startup.append((float(m.group(1)), m.group(2).strip()))
    if proc.wait() != 0 or not step_ms:
        raise SystemExit(f"{name} failed:\n" + "".join(tail))
    steady = step_ms[max(1, len(step_ms) // 10):]  # past warm-up
    return {"name": name, "wall_s": time.time() - t0, "first_step_s": first_step, "ms_per_iter": statistics.median(steady),
            "val_loss": val_loss, "startup": startup}


def flags(cfg: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in cfg.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default=str(REPO / "data"))
    parser.add_argument("--work_dir", default=str(REPO / "out-bench-train"))
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--runs", default="bare,ray1,ray2", help="which runs, comma-separated")
    parser.add_argument("--verbose", action="store_true", help="the 1-worker run's startup breakdown")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback-only local cluster
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    data_root, work = pathlib.Path(args.data_root).resolve(), pathlib.Path(args.work_dir).resolve()
    prepare_data(data_root)
    base = dict(QUICKSTART, data_root=str(data_root), max_iters=args.iters, lr_decay_iters=args.iters)
    tokens_per_iter = base["gradient_accumulation_steps"] * base["batch_size"] * base["block_size"]
    python = [sys.executable]
    commands = {
        "bare": ("bare (plain process, torch default threads)",
                 python + ["-m", "nanogpt_ray.train_loop", *flags(dict(base, out_dir=str(work / "bare")))]),
        "ray1": ("nanogpt-ray train, 1 worker",
                 python + ["-m", "nanogpt_ray.cli", "train", *flags(dict(base, out_dir=str(work / "ray1"),
                                                                         num_workers=1, verbose=args.verbose))]),
        "ray2": ("nanogpt-ray train, 2 workers",
                 python + ["-m", "nanogpt_ray.cli", "train", *flags(dict(base, out_dir=str(work / "ray2"), num_workers=2,
                                                                         gradient_accumulation_steps=2, batch_size=6))]),
    }
    rows = []
    for key in args.runs.split(","):
        name, command = commands[key]
        shutil.rmtree(work / key, ignore_errors=True)  # a fresh run each time, never a resume of an earlier one
        print(f"running {name} ...", flush=True)
        row = run(name, command, args.iters)
        row["tokens_per_s"] = tokens_per_iter / (row["ms_per_iter"] / 1000)
        rows.append(row)
        print(f"  {row['ms_per_iter']:.1f} ms/iter, first step after {row['first_step_s']:.1f} s, "
              f"{row['wall_s']:.0f} s in all, val loss {row['val_loss']}", flush=True)

    bare = next((r for r in rows if r["name"].startswith("bare")), None)
    print(f"\nnanoGPT's CPU quick start, {args.iters} iterations, {tokens_per_iter} tokens/iter, {os.cpu_count()} CPUs")
    print("| run | steady ms/iter | tokens/s | vs bare | command to first step | end to end | vs bare | val loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{bare['ms_per_iter'] / r['ms_per_iter']:.2f}x" if bare else "-"
        wall = f"{bare['wall_s'] / r['wall_s']:.2f}x" if bare else "-"
        print(f"| {r['name']} | {r['ms_per_iter']:.1f} | {r['tokens_per_s']:,.0f} | {speed} | {r['first_step_s']:.1f} s "
              f"| {r['wall_s']:.0f} s | {wall} | {r['val_loss']} |")
    for r in rows:
        if r["startup"]:
            print(f"\nstartup of '{r['name']}' (seconds since the command started):")
            previous = 0.0
            for at, phase in r["startup"]:
                print(f"  {at:6.2f} s  (+{at - previous:5.2f})  {phase}")
                previous = at
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
