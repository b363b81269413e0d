"""Time to loss: nanoGPT's recipe against the opt-in modern one (arch=modern, optimizer=muon), on CPU.

    SHAKESPEARE_INPUT=path/to/input.txt .venv/bin/python benchmarks/time_to_loss.py
    .venv/bin/python benchmarks/time_to_loss.py --sweep_iters=0 --lr_a=1e-3 --lr_b=3e-3 --lr_c=4e-3 --muon_lr_c=0.05
    .venv/bin/python benchmarks/time_to_loss.py --smoke       # a few iterations per run: proves it runs, measures nothing

nanoGPT's CPU quick start shape (4 layers, 4 heads, 128 wide, ctx 64, batch 12, no accumulation, dropout 0),
char-level tiny Shakespeare prepared into a temporary data_root. Three recipes:
  (a) nanoGPT: arch=gpt2, AdamW        (b) arch=modern, AdamW        (c) arch=modern, Muon (+ AdamW for the rest)
1. Learning rate: each recipe first runs a small sweep, --sweep_iters iterations per lr (the schedule shortened
   to match), bare (no Ray); the lr with the lowest val loss there is the recipe's lr.
2. Training budget: a cosine schedule only anneals by the end of its run, so how many iterations a run is planned
   for decides when it reaches a loss. Each recipe runs once per budget in --budgets_<name> (max_iters and
   lr_decay_iters both set to it; nanoGPT's own 2000 is always one of them), and its time to loss is the fastest
   of its budgets. Every recipe gets the same choice, nanoGPT's included.
Reported: the wall time and iteration at which val loss first reaches --target (evaluated every --eval_interval
iterations, eval time included, as a person waits for it), for every budget; the best per recipe against (a)'s
best; val loss at 2000 iterations (from the 2000 budget).
By default runs go one at a time with torch's default threads, as a person runs nanoGPT; on a shared, busy
machine --parallel=3 --threads=1 runs the recipes side by side so that all three see the same load.
"""

from __future__ import annotations

import argparse
import atexit
import multiprocessing
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nanogpt_ray.config import PrepareConfig, TrainConfig, from_dict  # noqa: E402
from nanogpt_ray.model import GPTConfig  # noqa: E402
from nanogpt_ray.modern import build_gpt  # noqa: E402
from nanogpt_ray.prepare import prepare_shakespeare  # noqa: E402
from nanogpt_ray.train_loop import Runtime, train  # noqa: E402

QUICKSTART = dict(  # nanoGPT README: train.py config/train_shakespeare_char.py --device=cpu --compile=False ...
    dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=12, block_size=64, n_layer=4, n_head=4,
    n_embd=128, dropout=0.0, beta2=0.99, warmup_iters=100, always_save_checkpoint=False, device="cpu",
    dtype="float32", compile=False, bias=False, num_workers=1, wandb_log=False,
)
RECIPES = {  # name: (fixed keys, the lrs the sweep tries as (learning_rate, muon_lr) pairs)
    "a": (dict(arch="gpt2", optimizer="adamw"), [(5e-4, None), (1e-3, None), (2e-3, None)]),
    "b": (dict(arch="modern", optimizer="adamw"), [(2e-3, None), (4e-3, None), (8e-3, None)]),
    "c": (dict(arch="modern", optimizer="muon"), [(4e-3, 0.02), (4e-3, 0.05), (8e-3, 0.05)]),
}
BUDGETS = {"a": "1250,1500,2000", "b": "1000,2000", "c": "400,450,500,2000"}  # where each one first reaches 1.88 (a wider look: --budgets_a=1000,...)
TITLES = {"a": "(a) nanoGPT: gpt2 + AdamW", "b": "(b) modern + AdamW", "c": "(c) modern + Muon"}


class TimedRuntime(Runtime):
    """The bare runtime, noting the wall time of every report (evals report val_loss)."""

    def __init__(self):
        super().__init__()
        self.t0 = time.perf_counter()

    def send(self, metrics, checkpoint_dir):
        metrics["wall_s"] = time.perf_counter() - self.t0


def run(data_root: str, out_dir: str, iters: int, args, **keys) -> list[dict]:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    lr = keys["learning_rate"]
    cfg = dict(QUICKSTART, data_root=data_root, out_dir=out_dir, max_iters=iters, lr_decay_iters=iters,
               warmup_iters=min(100, iters // 10), min_lr=lr / 10, eval_interval=args.eval_interval,
               eval_iters=args.eval_iters, log_interval=args.eval_interval, **keys)
    runtime = TimedRuntime()
    train(vars(from_dict(TrainConfig, cfg)), runtime)
    return [h for h in runtime.history if "val_loss" in h]


def lr_keys(lr: float, muon_lr: float | None) -> dict:
    return dict(learning_rate=lr) if muon_lr is None else dict(learning_rate=lr, muon_lr=muon_lr)


def run_job(job: tuple) -> tuple:
    name, phase, lr, muon_lr, data_root, work, iters, args = job
    out_dir = os.path.join(work, f"{phase}-{name}-{lr}-{muon_lr}")
    return name, phase, lr, muon_lr, run(data_root, out_dir, iters, args, **RECIPES[name][0], **lr_keys(lr, muon_lr))


def run_jobs(jobs: list[tuple], parallel: int) -> list[tuple]:
    if parallel <= 1:
        return [run_job(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(parallel) as pool:
        return pool.map(run_job, jobs, chunksize=1)


def params(arch: str, vocab_size: int = 65) -> int:
    model = build_gpt(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, vocab_size=vocab_size, arch=arch))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=os.environ.get("SHAKESPEARE_INPUT", ""), help="tiny Shakespeare input.txt")
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--sweep_iters", type=int, default=150)
    parser.add_argument("--eval_interval", type=int, default=50)
    parser.add_argument("--eval_iters", type=int, default=20)
    parser.add_argument("--recipes", default="abc")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run; 0 keeps torch's default")
    parser.add_argument("--parallel", type=int, default=1, help="runs at the same time")
    parser.add_argument("--repeats", type=int, default=1, help="runs per recipe and budget; wall times are medians")
    for name in RECIPES:
        parser.add_argument(f"--budgets_{name}", default=BUDGETS[name], help="iterations each run is planned for")
        parser.add_argument(f"--lr_{name}", type=float, default=None)
        parser.add_argument(f"--muon_lr_{name}", type=float, default=None)
    parser.add_argument("--smoke", action="store_true", help="one lr per sweep, 2-iteration runs, a target every run "
                        "reaches: seconds, figures meaningless")
    args = parser.parse_args()
    if args.smoke:
        args.sweep_iters, args.eval_interval, args.eval_iters, args.target, args.repeats = 2, 2, 1, 100.0, 1
        for name in RECIPES:
            setattr(args, f"budgets_{name}", "2")

    work = tempfile.mkdtemp(prefix="time-to-loss-")
    atexit.register(shutil.rmtree, work, True)  # data and checkpoints of every run: nothing worth keeping
    data_root = os.path.join(work, "data")
    prepare_shakespeare(PrepareConfig(dataset="shakespeare_char", data_root=data_root, input=args.input))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    chosen, sweep_lines = {}, []
    jobs = []
    for name in args.recipes:
        lr = getattr(args, f"lr_{name}")
        if lr is not None:
            chosen[name] = (lr, getattr(args, f"muon_lr_{name}"))
        else:
            candidates = RECIPES[name][1][:1] if args.smoke else RECIPES[name][1]
            jobs += [(name, "sweep", lr, muon_lr, data_root, work, args.sweep_iters, args) for lr, muon_lr in candidates]
    best_lr = {}
    for name, _, lr, muon_lr, evals in run_jobs(jobs, args.parallel):
        val = evals[-1]["val_loss"]
        sweep_lines.append(f"  {TITLES[name]}: lr {lr:g}" + (f", muon_lr {muon_lr:g}" if muon_lr else "") + f" -> val {val:.4f}")
        if name not in best_lr or val < best_lr[name][0]:
            best_lr[name] = (val, lr, muon_lr)
    chosen.update({name: (lr, muon_lr) for name, (_, lr, muon_lr) in best_lr.items()})
    print("\n".join(sweep_lines), flush=True)
    print(f"load average before the full runs: {os.getloadavg()[0]:.2f}", flush=True)

    rows = []
    # with --repeats, round-robin over recipes and budgets, so that a machine slowing down hits all of them alike
    jobs = [(name, f"budget{budget}-r{k}", *chosen[name], data_root, work, budget, args) for k in range(args.repeats)
            for name in args.recipes for budget in sorted({int(b) for b in getattr(args, f"budgets_{name}").split(",")})]
    runs = {}
    for name, phase, lr, muon_lr, evals in run_jobs(jobs, args.parallel):
        hit = next((e for e in evals if e["val_loss"] <= args.target), None)
        budget = int(phase[len("budget"):].split("-")[0])
        print(dict(name=name, budget=budget, iters=hit["iter"] if hit else None, wall_s=hit["wall_s"] if hit else None,
                   final=evals[-1]["val_loss"], total_s=evals[-1]["wall_s"]), flush=True)
        runs.setdefault((name, budget), []).append((hit, evals))
    for (name, budget), results in runs.items():  # the runs are deterministic: only their clocks differ
        hit, evals = results[0]
        lr, muon_lr = chosen[name]
        walls = [h["wall_s"] for h, _ in results if h is not None]
        rows.append(dict(name=name, budget=budget, lr=lr, muon_lr=muon_lr, params=params(RECIPES[name][0]["arch"]),
                         iters=hit["iter"] if hit else None, wall_s=statistics.median(walls) if walls else None,
                         walls=walls, final=evals[-1]["val_loss"],
                         total_s=statistics.median([e[-1]["wall_s"] for _, e in results])))

    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if sweep_lines:
        print(f"sweep ({args.sweep_iters} iterations per lr, val loss at the end):")
        print("\n".join(sweep_lines))
    print(f"\nevery run (val loss evaluated every {args.eval_interval} iterations):")
    print(f"| recipe | budget | iters to {args.target} | wall s to {args.target} (median) | final val loss | wall s in all |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        iters, wall = (r["iters"], f"{r['wall_s']:.0f}") if r["wall_s"] is not None else ("not reached", "-")
        if len(r["walls"]) > 1:
            wall += " (" + ", ".join(f"{w:.0f}" for w in r["walls"]) + ")"
        print(f"| {TITLES[r['name']]} | {r['budget']} | {iters} | {wall} | {r['final']:.4f} | {r['total_s']:.0f} |")

    best = {}
    for r in rows:
        if r["wall_s"] is not None and (r["name"] not in best or r["wall_s"] < best[r["name"]]["wall_s"]):
            best[r["name"]] = r
    at_2000 = {r["name"]: r["final"] for r in rows if r["budget"] == 2000}
    base = best.get("a", {}).get("wall_s")
    print(f"\n| recipe | lr | params | best budget | iters to {args.target} | wall s to {args.target} | vs (a) | "
          f"val loss at 2000 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.recipes:
        r = best.get(name)
        lr, muon_lr = chosen[name]
        lr_text = f"{lr:g}" + (f" (muon {muon_lr:g})" if muon_lr else "")
        final = f"{at_2000[name]:.4f}" if name in at_2000 else "-"
        if r is None:
            print(f"| {TITLES[name]} | {lr_text} | {params(RECIPES[name][0]['arch']):,} | - | not reached | - | - | {final} |")
            continue
        ratio = f"{r['wall_s'] / base:.2f}x" if base else "-"
        print(f"| {TITLES[name]} | {lr_text} | {r['params']:,} | {r['budget']} | {r['iters']} | {r['wall_s']:.0f} | "
              f"{ratio} | {final} |")


if __name__ == "__main__":
    main()
