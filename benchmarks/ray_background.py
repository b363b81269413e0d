"""Where the CPU goes during a 1-worker `nanogpt-ray train` on this machine, and what background load costs the bare loop.

    .venv/bin/python benchmarks/ray_background.py                 # both parts
    .venv/bin/python benchmarks/ray_background.py --part=ray      # only the per-process CPU of a Ray run
    .venv/bin/python benchmarks/ray_background.py --smoke         # a few iterations: proves it runs, measures nothing

Part "ray": nanoGPT's CPU quick start under `nanogpt-ray train --num_workers=1` on a fresh local cluster; once
iteration 150 is logged, every process's CPU time (utime + stime from /proc/<pid>/stat) is read twice,
--window seconds apart, and printed as % of one core, largest first (Linux only).
Part "busy": the bare loop (`python -m nanogpt_ray.train_loop`, torch's default threads) alone, then beside a
busy loop that spins --busy_fraction of every 10 ms on one core: the median ms/iter of each, interleaved twice.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from train_speed import QUICKSTART, flags, prepare_data  # noqa: E402

ITER = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def cpu_ticks() -> dict[int, tuple[int, str]]:
    ticks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            name = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[int(pid)] = (int(fields[11]) + int(fields[12]), name.strip()[:80] or stat[stat.index("(") + 1:stat.rindex(")")])
    return ticks


def ray_part(args, base: dict) -> None:
    env = dict(os.environ, RAY_ADDRESS="local")
    iters = 6 * args.start_iter
    cmd = [sys.executable, "-m", "nanogpt_ray.cli", "train",
           *flags(dict(base, max_iters=iters, lr_decay_iters=iters, num_workers=1, out_dir=str(args.work_dir / "ray")))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if (m := ITER.search(line)) and int(m.group(1)) >= args.start_iter:
            break
    before, t0 = cpu_ticks(), time.time()
    time.sleep(args.window)
    after, elapsed = cpu_ticks(), time.time() - t0
    proc.send_signal(signal.SIGINT)  # as Ctrl-C: the driver stops the local cluster it started
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    hz = os.sysconf("SC_CLK_TCK")
    rows = sorted(((after[p][0] - before[p][0]) / hz / elapsed * 100, after[p][1]) for p in after if p in before)
    print(f"CPU over {args.window:.0f} s of a 1-worker run, % of one core ({os.cpu_count()} cores):")
    others = 0.0
    for pct, name in reversed(rows):
        if pct >= 0.3:
            print(f"  {pct:6.1f}%  {name}")
            others += pct if "RayTrainWorker" not in name else 0.0
    print(f"  everything but the training worker: {others:.1f}%")


def bare_ms(base: dict, work: pathlib.Path, busy: float, iters: int) -> float:
    spinner = None
    if busy:
        spin = ("import time\nwhile True:\n t = time.perf_counter()\n while time.perf_counter() - t < %f: pass\n"
                " time.sleep(%f)" % (busy * 0.01, (1 - busy) * 0.01))
        spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        out = subprocess.run([sys.executable, "-m", "nanogpt_ray.train_loop",
                              *flags(dict(base, max_iters=iters, lr_decay_iters=iters, out_dir=str(work / "bare")))],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    finally:
        if spinner is not None:
            spinner.kill()
    return statistics.median(float(t) for i, t in ITER.findall(out) if int(i) >= iters * 3 // 20)  # after warm-up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["ray", "busy", "both"], default="both")
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--busy_fraction", type=float, default=0.1)
    parser.add_argument("--data_root", default=str(REPO / "data"))
    parser.add_argument("--work_dir", type=pathlib.Path, default=REPO / "out-bench-background")
    parser.add_argument("--start_iter", type=int, default=150, help="the Ray run's CPU is read from this iteration on")
    parser.add_argument("--bare_iters", type=int, default=400, help="iterations of each bare-loop run")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved pairs of bare-loop runs")
    parser.add_argument("--smoke", action="store_true", help="a few iterations, a 1 s window: seconds, figures meaningless")
    args = parser.parse_args()
    if args.smoke:
        args.start_iter, args.bare_iters, args.window, args.repeats = 10, 20, 1.0, 1
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    shutil.rmtree(args.work_dir, ignore_errors=True)  # fresh runs, never a resume
    prepare_data(pathlib.Path(args.data_root).resolve())
    base = dict(QUICKSTART, data_root=str(pathlib.Path(args.data_root).resolve()), log_interval=10)
    if args.smoke:
        base.update(eval_iters=2)
    if args.part in ("ray", "both"):
        ray_part(args, base)
    if args.part in ("busy", "both"):
        alone, busy = [], []
        for _ in range(args.repeats):
            alone.append(bare_ms(base, args.work_dir, 0.0, args.bare_iters))
            busy.append(bare_ms(base, args.work_dir, args.busy_fraction, args.bare_iters))
        a, b = statistics.median(alone), statistics.median(busy)
        print(f"bare loop alone: {a:.1f} ms/iter {alone}; beside a busy loop at {args.busy_fraction:.0%} of one core: "
              f"{b:.1f} ms/iter {busy} ({a / b:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
