"""Training speed against what a nanoGPT user runs, side by side, on nanoGPT's CPU quick start.

    .venv/bin/python benchmarks/train_speed.py                           # 2000 iterations, 3 interleaved repeats
    .venv/bin/python benchmarks/train_speed.py --iters=500 --repeats=3   # a quicker look
    NANOGPT_DIR=/path/to/nanoGPT .venv/bin/python benchmarks/train_speed.py   # nanoGPT's own train.py too
    .venv/bin/python benchmarks/train_speed.py --smoke                   # tiny shapes, seconds: does it still run

Every run is a separate command, timed from its launch as a person would time it:
- bare: `python -m nanogpt_ray.train_loop`: our loop in a plain process with torch's default threads.
- local mode: `nanogpt-ray train` as typed (one worker, no cluster named): Ray Train's local mode, in-process.
- torchrun 2: `torchrun --standalone --nproc_per_node=2 -m nanogpt_ray.cli train` (local mode on each rank, gloo
  DDP), the same global batch (accumulation 2 x batch 6 instead of 1 x 12).
- ray 1 / ray 2 workers: `nanogpt-ray train` on a fresh local Ray cluster (RAY_ADDRESS=local), 1 or 2 Ray Train
  workers (2: the same global batch as torchrun 2).
- nanoGPT: its train.py in a temporary copy of $NANOGPT_DIR with data/shakespeare_char prepared by its own
  prepare.py from the same input.txt (never written into the checkout itself).
The runs rotate (bare, local, ..., bare, local, ...) --repeats times; the table holds medians. Per run: steady
ms/iter (median of the log lines after the first 10%), seconds from the command to the eval at step 0 (every
run evaluates before its first step), end-to-end wall time, final val loss (min..max over repeats: the noise).
The config is nanoGPT's README quick start: train_shakespeare_char.py --device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 (log_interval 10 here, as its config file has).
"""

from __future__ import annotations

import argparse
import gzip
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
SHIPPED_CORPUS = REPO / "data" / "shakespeare_char" / "input.txt.gz"  # the same text nanoGPT downloads

QUICKSTART = dict(  # nanoGPT README's CPU run of config/train_shakespeare_char.py
    dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=12, block_size=64, n_layer=4, n_head=4,
    n_embd=128, dropout=0.0, learning_rate=1e-3, min_lr=1e-4, beta2=0.99, warmup_iters=100, eval_iters=20,
    eval_interval=250, log_interval=10, always_save_checkpoint=False, device="cpu", dtype="float32", compile=False,
    bias=False,
)
SMOKE = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, eval_iters=2, eval_interval=10, log_interval=5, warmup_iters=2)
ITER_LINE = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")
EVAL_LINE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
STARTUP_LINE = re.compile(r"\[startup +([\d.]+) s\] (.*)")
NAMES = {"bare": "bare loop (plain process)", "local": "nanogpt-ray train (local mode)",
         "torchrun2": "torchrun 2 processes (local mode)", "ray1": "1 Ray Train worker", "ray2": "2 Ray Train workers",
         "nanogpt": "nanoGPT train.py"}


def prepare_data(data_root: pathlib.Path) -> None:
    if not (data_root / "shakespeare_char" / "train.bin").exists():
        subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", "prepare", "shakespeare_char",
                        f"--data_root={data_root}"], cwd=REPO, check=True)


def prepare_nanogpt(nanogpt_dir: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """A temporary copy of the nanoGPT checkout with data/shakespeare_char/{train,val}.bin and meta.pkl."""
    copy = work / "nanoGPT"
    if not (copy / "data" / "shakespeare_char" / "meta.pkl").exists():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(nanogpt_dir, copy, ignore=shutil.ignore_patterns(".git", "out*"))
        with gzip.open(SHIPPED_CORPUS, "rb") as src, open(copy / "data" / "shakespeare_char" / "input.txt", "wb") as dst:
            shutil.copyfileobj(src, dst)  # present, so its prepare.py downloads nothing
        subprocess.run([sys.executable, "prepare.py"], cwd=copy / "data" / "shakespeare_char", check=True,
                       stdout=subprocess.DEVNULL)
    return copy


def run(name: str, command: list[str], cwd: pathlib.Path, env: dict, iters: int) -> dict:
    """Run one command, reading its log as it comes: time to the step-0 eval, per-iteration times, final val loss."""
    t0 = time.time()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_step, step_ms, val_loss, startup, tail = None, [], None, [], []
    for line in proc.stdout:
        tail = (tail + [line])[-30:]
        if (m := ITER_LINE.search(line)) is not None:
            if int(m.group(1)) > 0:  # nanoGPT also logs iteration 0, whose time includes the first eval
                step_ms.append(float(m.group(2)))
        elif (m := EVAL_LINE.search(line)) is not None:
            first_step = first_step if first_step is not None else time.time() - t0
            if int(m.group(1)) == iters:
                val_loss = float(m.group(3))
        elif (m := STARTUP_LINE.search(line)) is not None:
            startup.append((float(m.group(1)), m.group(2).strip()))
    if proc.wait() != 0 or not step_ms:
        raise SystemExit(f"{name} failed:\n" + "".join(tail))
    steady = step_ms[len(step_ms) // 10:]  # past warm-up
    return {"name": name, "wall_s": time.time() - t0, "first_step_s": first_step,
            "ms_per_iter": statistics.median(steady), "val_loss": val_loss, "startup": startup}


def flags(cfg: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in cfg.items()]


def commands(base: dict, work: pathlib.Path, nanogpt: pathlib.Path | None, verbose: bool) -> dict:
    """key -> (command, cwd, environment changes); every command writes to its own out_dir under work."""
    python, cli = [sys.executable], [sys.executable, "-m", "nanogpt_ray.cli", "train"]
    torchrun = str(pathlib.Path(sys.executable).parent / "torchrun")
    split = dict(gradient_accumulation_steps=2 * base["gradient_accumulation_steps"], batch_size=base["batch_size"] // 2)
    no_cluster = {"RAY_ADDRESS": None}  # what a person types, with no cluster named
    fresh_cluster = {"RAY_ADDRESS": "local"}  # a fresh local cluster, never one already running here
    out = {
        "bare": (python + ["-m", "nanogpt_ray.train_loop", *flags(dict(base, out_dir=work / "bare"))], REPO, no_cluster),
        "local": (cli + flags(dict(base, out_dir=work / "local", verbose=verbose)), REPO, no_cluster),
        "torchrun2": ([torchrun, "--standalone", "--nproc_per_node=2", "-m", "nanogpt_ray.cli", "train",
                       *flags(dict(base, **split, out_dir=work / "torchrun2"))], REPO, no_cluster),
        "ray1": (cli + flags(dict(base, out_dir=work / "ray1", num_workers=1, verbose=verbose)), REPO, fresh_cluster),
        "ray2": (cli + flags(dict(base, **split, out_dir=work / "ray2", num_workers=2)), REPO, fresh_cluster),
    }
    if nanogpt is not None:
        keys = ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "eval_iters", "eval_interval",
                "log_interval", "max_iters", "lr_decay_iters", "warmup_iters", "device", "compile", "dtype")
        out["nanogpt"] = (python + ["train.py", "config/train_shakespeare_char.py",
                                    *flags({k: base[k] for k in keys}), f"--out_dir={work / 'nanogpt-out'}"],
                          nanogpt, no_cluster)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default=str(REPO / "data"))
    parser.add_argument("--work_dir", default=str(REPO / "out-bench-train"))
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", default="bare,local,torchrun2,ray1,ray2,nanogpt",
                        help="which runs, comma-separated (nanogpt only when NANOGPT_DIR is set)")
    parser.add_argument("--verbose", action="store_true", help="the local and 1-worker runs' startup breakdown")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 20 iterations, bare and local once")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback-only local cluster
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.smoke:
        args.iters, args.repeats = 20, 1
        args.runs = args.runs if "--runs" in " ".join(sys.argv) else "bare,local"
    data_root, work = pathlib.Path(args.data_root).resolve(), pathlib.Path(args.work_dir).resolve()
    prepare_data(data_root)
    base = dict(QUICKSTART, **(SMOKE if args.smoke else {}), data_root=str(data_root), max_iters=args.iters,
                lr_decay_iters=args.iters)
    keys = [k for k in args.runs.split(",") if k != "nanogpt" or os.environ.get("NANOGPT_DIR")]
    nanogpt = prepare_nanogpt(pathlib.Path(os.environ["NANOGPT_DIR"]), work) if "nanogpt" in keys else None
    table = commands(base, work, nanogpt, args.verbose)
    runs: dict[str, list[dict]] = {k: [] for k in keys}
    for repeat in range(args.repeats):
        for key in keys:  # interleaved: every run sees the machine's load of the same minutes
            command, cwd, env_changes = table[key]
            env = {k: v for k, v in {**os.environ, **env_changes}.items() if v is not None}
            for stale in ("bare", "local", "torchrun2", "ray1", "ray2", "nanogpt-out"):
                shutil.rmtree(work / stale, ignore_errors=True)  # a fresh run each time, never a resume
            print(f"[{repeat + 1}/{args.repeats}] {NAMES[key]} ...", flush=True)
            row = run(NAMES[key], command, cwd, env, args.iters)
            runs[key].append(row)
            print(f"  {row['ms_per_iter']:.1f} ms/iter, step 0 after {row['first_step_s']:.1f} s, "
                  f"{row['wall_s']:.1f} s in all, val loss {row['val_loss']}", flush=True)

    tokens_per_iter = base["gradient_accumulation_steps"] * base["batch_size"] * base["block_size"]
    med = {k: {m: statistics.median(r[m] for r in rows) for m in ("ms_per_iter", "first_step_s", "wall_s")}
           for k, rows in runs.items()}
    print(f"\nnanoGPT's CPU quick start, {args.iters} iterations, {tokens_per_iter} tokens/iter, {os.cpu_count()} CPUs, "
          f"medians of {args.repeats} interleaved repeats")
    print("| run | steady ms/iter | steady vs bare | command to step 0 | end to end | vs bare | vs nanoGPT | val loss (min..max) |")
    print("|---|---|---|---|---|---|---|---|")
    for key, m in med.items():
        speed = f"{med['bare']['ms_per_iter'] / m['ms_per_iter']:.2f}x" if "bare" in med else "-"
        wall = f"{med['bare']['wall_s'] / m['wall_s']:.2f}x" if "bare" in med else "-"
        vs_nanogpt = f"{med['nanogpt']['wall_s'] / m['wall_s']:.2f}x" if "nanogpt" in med else "-"
        losses = sorted(r["val_loss"] for r in runs[key] if r["val_loss"] is not None)
        loss = f"{statistics.median(losses):.4f} ({losses[0]:.4f}..{losses[-1]:.4f})" if losses else "-"
        print(f"| {NAMES[key]} | {m['ms_per_iter']:.1f} | {speed} | {m['first_step_s']:.1f} s | {m['wall_s']:.1f} s "
              f"| {wall} | {vs_nanogpt} | {loss} |")
    for key, rows in runs.items():
        if rows[-1]["startup"]:
            print(f"\nstartup of '{NAMES[key]}' (seconds since the command started, last repeat):")
            previous = 0.0
            for at, phase in rows[-1]["startup"]:
                print(f"  {at:6.2f} s  (+{at - previous:5.2f})  {phase}")
                previous = at
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
