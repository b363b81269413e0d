"""Preparation speed: GPT-2 BPE tokens/s of `prepare`, one process against Ray Data on every core, and peak memory.

    .venv/bin/python benchmarks/prepare_speed.py                   # 200 MB corpus (and 50 MB to show memory is flat)
    .venv/bin/python benchmarks/prepare_speed.py --size_mb=400 --small_mb=0
    .venv/bin/python benchmarks/prepare_speed.py --smoke     # a 0.25 MB corpus: proves the script runs, measures nothing

A jsonl corpus of random tiny-Shakespeare passages (200 to 4,000 characters each) is generated in a temporary
folder, prepared once in a single process (parallel=False) and once on a fresh local Ray cluster with one
tokenizer actor per core (parallel=True), each run in its own fresh interpreter; everything is deleted at the end.
Tokens/s counts the prepare call alone; the Ray cluster's start is reported beside it. Peak memory is each
process's VmHWM (Linux's peak resident set): the driver, the largest tokenizer actor, and the sum over every
process of the run (Ray's own raylet/GCS included; shared object-store pages count in each process that maps them,
so the sum overstates). Goal on 2 cores: >= 1.7x, with peaks that stay flat as the corpus grows.
On a shared machine other jobs steal cores: read the speedup together with the load average it prints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_INPUT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
FILE_MB = 25  # the corpus is several files, as real ones are; each file is cut further into --chunk_mb units


def make_corpus(folder: pathlib.Path, size_mb: float, source: pathlib.Path, seed: int = 0) -> int:
    text = source.read_text(encoding="utf-8")
    rng = random.Random(seed)
    written, index = 0, 0
    while written < size_mb * 2**20:
        with open(folder / f"part-{index:03d}.jsonl", "w", encoding="utf-8") as f:
            file_bytes = 0
            while file_bytes < FILE_MB * 2**20 and written + file_bytes < size_mb * 2**20:
                start = rng.randrange(len(text) - 4000)
                line = json.dumps({"text": text[start:start + rng.randrange(200, 4000)], "id": rng.getrandbits(32)}) + "\n"
                f.write(line)
                file_bytes += len(line)
        written += file_bytes
        index += 1
    return written


# ----------------------------------------------------------------------------- peak memory from /proc

def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


class PeakMemory(threading.Thread):
    """Samples VmHWM (a per-process high-water mark, so sampling only misses a process's last moments)
    of this process and every descendant: Ray's raylet, GCS and the workers it forks."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.peaks, self.names, self.stop = interval, {}, {}, threading.Event()

    def sample(self) -> None:
        tree, stack = _children_of(), [os.getpid()]
        while stack:
            pid = stack.pop()
            stack.extend(tree.get(pid, []))
            self.peaks[pid] = max(self.peaks.get(pid, 0), _hwm_kb(pid))
            self.names.setdefault(pid, set()).add(_name(pid))  # a worker renames itself ray::<actor> to run one

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def result(self) -> dict:
        self.sample()
        self.stop.set()
        actors = [kb for pid, kb in self.peaks.items() if any("MapWorker" in n for n in self.names.get(pid, ()))]
        return {"driver_mb": self.peaks[os.getpid()] / 1024, "worker_mb": max(actors, default=0) / 1024,
                "workers": len(actors), "total_mb": sum(self.peaks.values()) / 1024}


# ----------------------------------------------------------------------------- one run, in a fresh interpreter

def child(args) -> None:
    sys.path.insert(0, str(REPO))
    from nanogpt_ray.cluster.prepare import prepare
    from nanogpt_ray.config import PrepareConfig, load_config

    memory = PeakMemory()
    memory.start()
    startup = 0.0
    if args.mode == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
    cfg = load_config(PrepareConfig, [], ["--dataset=text", f"--input={args.corpus}/*.jsonl", f"--data_root={args.out}",
                                          f"--parallel={args.mode == 'ray'}", f"--num_workers={args.workers}",
                                          f"--chunk_mb={args.chunk_mb}", "--progress=False"])
    t0 = time.perf_counter()
    meta = prepare(cfg)
    seconds = time.perf_counter() - t0
    peaks = memory.result()
    digest = hashlib.sha256()
    for split in ("train", "val"):
        with open(os.path.join(cfg.output_dir(), f"{split}.bin"), "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    print("RESULT " + json.dumps(dict(peaks, seconds=seconds, startup=startup, documents=meta["documents"],
                                      tokens=meta["train_tokens"] + meta["val_tokens"], sha256=digest.hexdigest())))
    if args.mode == "ray":
        import ray

        ray.shutdown()


def run_child(mode: str, corpus: pathlib.Path, out: pathlib.Path, args) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, __file__, "--_child", mode, "--_corpus", str(corpus), "--_out", str(out),
                           f"--workers={args.workers}", f"--chunk_mb={args.chunk_mb}"],
                          capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{mode} run failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size_mb", type=float, default=200, help="corpus size (the goal is stated for >= 200)")
    parser.add_argument("--small_mb", type=float, default=50, help="a smaller corpus to compare peak memory with; 0: none")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="Ray tokenizer actors (= CPUs of the cluster)")
    parser.add_argument("--chunk_mb", type=int, default=16)
    parser.add_argument("--input", type=pathlib.Path, default=pathlib.Path(os.environ.get("SHAKESPEARE_INPUT", SHARED_INPUT)))
    parser.add_argument("--smoke", action="store_true", help="a 0.25 MB corpus, 2 actors: seconds, figures meaningless")
    parser.add_argument("--_child", choices=["single", "ray"], dest="mode", help=argparse.SUPPRESS)
    parser.add_argument("--_corpus", dest="corpus", help=argparse.SUPPRESS)
    parser.add_argument("--_out", dest="out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        return child(args)
    if args.smoke:
        args.size_mb, args.small_mb, args.workers, args.chunk_mb = 0.25, 0, 2, 1
    if not args.input.is_file():
        sys.exit(f"tiny Shakespeare not found at {args.input}; pass --input=PATH")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "data" / "tiktoken_cache"))

    rows = []
    work = pathlib.Path(tempfile.mkdtemp(prefix="prepare-speed-"))
    try:
        for size in [s for s in (args.small_mb, args.size_mb) if s > 0]:
            corpus = work / f"corpus-{size}"
            corpus.mkdir()
            actual = make_corpus(corpus, size, args.input)
            results = {mode: run_child(mode, corpus, work / f"out-{size}-{mode}", args) for mode in ("single", "ray")}
            identical = results["single"]["sha256"] == results["ray"]["sha256"]
            for mode, r in results.items():
                rows.append(dict(r, mode=mode, corpus_mb=actual / 2**20, identical=identical,
                                 speedup=results["single"]["seconds"] / r["seconds"]))
            shutil.rmtree(corpus)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nprepare speed: GPT-2 BPE, jsonl corpus, chunk_mb={args.chunk_mb}, {os.cpu_count()} cores, "
          f"Ray actors={args.workers}, load average {os.getloadavg()[0]:.1f} (other jobs on the machine skew this)")
    header = (f"{'corpus':>8} {'mode':>6} {'documents':>10} {'tokens':>12} {'seconds':>8} {'tokens/s':>11} {'speedup':>7} "
              f"{'ray start':>9} {'driver MB':>9} {'worker MB':>9} {'all MB':>7} {'same bytes':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        worker = f"{r['worker_mb']:.0f} x{r['workers']}" if r["mode"] == "ray" else "-"
        print(f"{r['corpus_mb']:>6.0f}MB {r['mode']:>6} {r['documents']:>10,} {r['tokens']:>12,} {r['seconds']:>8.1f} "
              f"{r['tokens'] / r['seconds']:>11,.0f} {r['speedup']:>6.2f}x {r['startup']:>8.1f}s {r['driver_mb']:>9.0f} "
              f"{worker:>9} {r['total_mb']:>7.0f} {'yes' if r['identical'] else 'NO':>10}")


if __name__ == "__main__":
    main()
