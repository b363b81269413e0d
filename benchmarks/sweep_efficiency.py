"""Sweep efficiency: a full learning-rate grid against ASHA on the same trials.

    .venv/bin/python benchmarks/sweep_efficiency.py                  # 8 lrs, mini char model, 2 sweeps
    .venv/bin/python benchmarks/sweep_efficiency.py --max_iters=300  # quicker, noisier
    .venv/bin/python benchmarks/sweep_efficiency.py --smoke          # 1 lr, 4 iterations: proves it runs

Both sweeps train the same 8 learning rates (log-spaced, in a fixed shuffled order so that ASHA does not see
them sorted) on character-level tiny Shakespeare with the same seed, so a trial that runs to the end reaches
the same val loss in both. Measured: total training iterations each sweep spent (sum of every trial's last
iteration), the best val loss each found, and wall time.
Goal: ASHA's best within 0.01 of the grid's best for <= 40 % of the grid's iterations.

Asynchronous ASHA's outcome depends on the order trials start in (a trial reaching a rung is judged only
against the trials that reached it before), so one run is one draw. The script then replays ASHA (Ray's own
rung logic) over the grid's learning curves for --replay_orders random start orders, with the same
concurrency, and reports how often both goals are met.
Tiny Shakespeare is prepared (char level) from --input when data_root has no shakespeare_char yet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nanogpt_ray.config import PrepareConfig, SweepConfig  # noqa: E402
from nanogpt_ray.prepare import prepare_shakespeare  # noqa: E402


def learning_rates(low: float, high: float, count: int, seed: int) -> list[float]:
    step = (high / low) ** (1 / (count - 1)) if count > 1 else 1.0  # one rate (--smoke): low
    lrs = [float(f"{low * step ** i:.3g}") for i in range(count)]
    random.Random(seed).shuffle(lrs)  # Tune starts grid points in order; a sorted grid would flatter or hurt ASHA
    return lrs


def sweep_config(args, lrs: list[float], scheduler: str, name: str) -> SweepConfig:
    train = dict(dataset="shakespeare_char", data_root=str(args.data_root), gradient_accumulation_steps=1,
                 batch_size=12, block_size=64, dropout=0.0, beta2=0.99, warmup_iters=args.max_iters // 20,
                 max_iters=args.max_iters, lr_decay_iters=args.max_iters, eval_interval=args.eval_interval,
                 eval_iters=args.eval_iters, log_interval=args.eval_interval, always_save_checkpoint=False,
                 num_checkpoints_to_keep=1, device="cpu", dtype="float32", compile=False)
    return SweepConfig(train_overrides=train, learning_rates=lrs, model_sizes=[args.size], scheduler=scheduler,
                       grace_period=args.grace_period, reduction_factor=args.reduction_factor,
                       workers_per_trial=1, cpus_per_worker=args.cpus_per_worker, storage_path=str(args.storage),
                       sweep_name=name)


def run(args, lrs: list[float], scheduler: str) -> dict:
    from nanogpt_ray.cluster.tune import run_sweep

    start = time.time()
    report = run_sweep(sweep_config(args, lrs, scheduler, f"{scheduler}-{int(time.time())}"))
    elapsed = time.time() - start
    rows = report.rows
    errors = [r for r in rows if r["status"] != "done"]
    if errors:
        raise SystemExit(f"{scheduler} sweep: {len(errors)} trials failed: {[r['error'] for r in errors]}")
    best = rows[0]
    return dict(scheduler=scheduler, iterations=sum(r["iters_run"] for r in rows), best_val_loss=best["best_val_loss"],
                best_lr=best["learning_rate"], wall_s=round(elapsed, 1), stopped_early=sum(r["stopped_early"] for r in rows),
                per_trial={r["learning_rate"]: (r["iters_run"], r["best_val_loss"]) for r in rows},
                sweep_dir=report.sweep_dir, concurrency=report.concurrency)


def grid_curves(sweep_dir: str) -> dict[float, dict[int, float]]:
    """lr -> {iteration: val loss} from the grid sweep's per-trial result.json files."""
    curves = {}
    for path in pathlib.Path(sweep_dir).glob("train_driver_fn_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        curves[rows[0]["config"]["learning_rate"]] = {r["iter"]: r["val_loss"] for r in rows if "val_loss" in r}
    return curves


def replay_asha(curves: dict, order: list[float], max_t: int, grace: int, rf: float, concurrency: int) -> tuple[int, float]:
    """(iterations spent, best val loss found) of asynchronous ASHA on recorded curves, trials started in `order`
    `concurrency` at a time, all training at the same speed; decisions by Ray's _Bracket."""
    from types import SimpleNamespace

    from ray.tune.schedulers.async_hyperband import _Bracket
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0)
    queue, running, spent, best = list(order), {}, 0, math.inf
    while queue or running:
        while queue and len(running) < concurrency:
            running[queue.pop(0)] = 0
        evals = {lr: sorted(it for it in curves[lr] if it > done) for lr, done in running.items()}
        step = min(points[0] - running[lr] for lr, points in evals.items())
        for lr in list(running):
            running[lr] += step
            it = running[lr]
            if it not in curves[lr]:
                continue
            best = min(best, curves[lr][it])
            trial = SimpleNamespace(trial_id=str(lr))
            if bracket.on_result(trial, it, -curves[lr][it]) == TrialScheduler.STOP or it >= max_t:
                spent += it
                del running[lr]
    return spent, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=os.environ.get("SHAKESPEARE_INPUT", str(REPO.parent / "shared/data/tinyshakespeare/input.txt")))
    parser.add_argument("--work", default=str(REPO / "bench_profile" / "sweep_efficiency"))
    parser.add_argument("--size", default="mini", help="model preset of every trial")
    parser.add_argument("--num_lrs", type=int, default=8)
    parser.add_argument("--lr_low", type=float, default=1e-4)
    parser.add_argument("--lr_high", type=float, default=3e-2)
    parser.add_argument("--seed", type=int, default=0, help="order of the grid")
    parser.add_argument("--max_iters", type=int, default=800)
    parser.add_argument("--eval_interval", type=int, default=50)
    parser.add_argument("--eval_iters", type=int, default=20)
    parser.add_argument("--grace_period", type=int, default=100)
    parser.add_argument("--reduction_factor", type=float, default=3)
    parser.add_argument("--replay_orders", type=int, default=200, help="random start orders replayed on the grid's curves")
    parser.add_argument("--cpus_per_worker", type=float, default=0.99, help="0.99: two trials share 2 CPUs")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--smoke", action="store_true", help="1 lr, 4 iterations, the smallest preset: seconds of "
                        "training (plus Ray's start), figures meaningless")
    args = parser.parse_args()
    if args.smoke:  # one trial per sweep: each trial's driver, controller and worker start cost seconds of 2 cores
        args.num_lrs, args.max_iters, args.eval_interval, args.eval_iters = 1, 4, 2, 2
        args.grace_period, args.reduction_factor, args.replay_orders, args.size = 2, 2, 2, "tiny"
    work = pathlib.Path(args.work)
    args.data_root, args.storage = work / "data", work / "sweeps"
    if not (args.data_root / "shakespeare_char" / "train.bin").exists():
        prepare_shakespeare(PrepareConfig(dataset="shakespeare_char", data_root=str(args.data_root), input=args.input))

    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    ray.init(address="local", include_dashboard=True,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    lrs = learning_rates(args.lr_low, args.lr_high, args.num_lrs, args.seed)
    print(f"learning rates, in the order Tune starts them: {lrs}")
    grid = run(args, lrs, "none")
    asha = run(args, lrs, "asha")
    ray.shutdown()

    share = asha["iterations"] / grid["iterations"]
    gap = asha["best_val_loss"] - grid["best_val_loss"]
    print(f"\n{'':6s}{'iterations':>12s}{'best val':>10s}{'best lr':>10s}{'stopped':>9s}{'wall s':>9s}")
    for r in (grid, asha):
        print(f"{'grid' if r is grid else 'asha':6s}{r['iterations']:>12,d}{r['best_val_loss']:>10.4f}{r['best_lr']:>10.3g}"
              f"{r['stopped_early']:>9d}{r['wall_s']:>9.1f}")
    print(f"ASHA: {share:.1%} of the grid's iterations, best val loss {gap:+.4f} vs the grid "
          f"(goal: <= 40 % and within 0.01): {'met' if share <= 0.40 and gap <= 0.01 else 'not met'}")
    for lr in sorted(lrs):
        g, a = grid["per_trial"][lr], asha["per_trial"][lr]
        print(f"  lr {lr:<8.3g} grid {g[0]:>5d} iters, val {g[1]:.4f}   asha {a[0]:>5d} iters, val {a[1]:.4f}")

    curves = grid_curves(grid["sweep_dir"])
    concurrency = asha["concurrency"]
    replays = []
    rng = random.Random(args.seed + 1)
    for _ in range(args.replay_orders):
        order = sorted(curves)
        rng.shuffle(order)
        spent, best = replay_asha(curves, order, args.max_iters, args.grace_period, args.reduction_factor, concurrency)
        replays.append((spent / grid["iterations"], best - grid["best_val_loss"]))
    replay = dict(orders=len(replays), mean_share=sum(r[0] for r in replays) / len(replays),
                  found_best=sum(r[1] <= 0.01 for r in replays) / len(replays),
                  both_goals=sum(r[0] <= 0.40 and r[1] <= 0.01 for r in replays) / len(replays))
    print(f"replay of ASHA on the grid's curves, {replay['orders']} random start orders, {concurrency} at a time: "
          f"mean {replay['mean_share']:.1%} of the grid's iterations, best found (within 0.01) in "
          f"{replay['found_best']:.0%} of orders, both goals in {replay['both_goals']:.0%}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(dict(grid=grid, asha=asha, share=share, gap=gap, replay=replay, args={
            k: str(v) for k, v in vars(args).items()}), indent=2, default=str))


if __name__ == "__main__":
    main()
