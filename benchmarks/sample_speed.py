"""Sampling speed: nanoGPT's way (batch 1, full recomputation every token) against ours (KV cache, batches,
Ray actors), for nanoGPT's shakespeare-char shape: 6 layers, 384 wide, 6 heads, vocab 65, ctx 256,
random weights (speed does not depend on them), 500 new tokens from a one-token prompt.

    .venv/bin/python benchmarks/sample_speed.py                    # the table
    .venv/bin/python benchmarks/sample_speed.py --exact_batch16    # also batch 16 with the exact window (slow)

500 new tokens outgrow ctx 256. Past block_size nanoGPT crops to the last 256 tokens every step; with learned
absolute positions that changes every kept token's keys and values, so an exact KV cache has to re-prefill
256 tokens per step (rows "exact window"): the cache only helps for the first 255 tokens. Rows with
"shift N" use engine.generate(context_shift=N): when the window is full it jumps N tokens at once and the cache
is rebuilt once per N tokens (llama.cpp's context shift): tokens past block_size differ from nanoGPT's.

Every single-process row runs with --threads torch threads (default 1, like one Ray actor on one CPU): on a
busy 2-core machine two threads make each small decoding op wait for a descheduled sibling thread.

    .venv/bin/python benchmarks/sample_speed.py --threads_table    # batch-1 decoding: 1 thread vs all, quiet
                                                                    # and beside a busy loop, interleaved
    .venv/bin/python benchmarks/sample_speed.py --smoke             # tiny shapes, no Ray: seconds

--threads_table is what `sample` (and actors, serve replicas) decide from: with neither --threads nor
OMP_NUM_THREADS they run a short probe of the same two choices (sample.decode_threads); its pick is a column.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanogpt_ray.engine import generate  # noqa: E402
from nanogpt_ray.model import GPT, GPTConfig  # noqa: E402

SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False, dropout=0.0)
SMOKE_SHAPE = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=65, bias=False, dropout=0.0)


def build_model(seed=0, shape=None):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**(shape or SHAPE))).eval()


def threads_table(model, new_tokens: int, context_shift: int, rounds: int) -> list[tuple]:
    """Batch-1 KV-cache decoding with 1 thread and with all of torch's default threads, on a quiet machine and
    beside one busy loop (another program on a core), the two thread counts interleaved round by round; plus
    the choice sample.decode_threads' probe makes in each condition. Rows: (condition, threads, median s,
    tokens/s, probe's pick)."""
    from nanogpt_ray.device import autocast_context
    from nanogpt_ray.sample import Sampler, probe_threads

    many = torch.get_num_threads()
    sampler = Sampler(model, None, "cpu", autocast_context("cpu", "float32"))
    rows = []
    for condition in ("quiet", "beside a busy loop"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition != "quiet" else None
        try:
            pick = probe_threads(sampler, (1, many))
            seconds = {1: [], many: []}
            for _ in range(rounds):
                for n in seconds:
                    torch.set_num_threads(n)
                    seconds[n].append(time_generate(model, 1, new_tokens, True, context_shift)[1])
        finally:
            torch.set_num_threads(many)
            if busy is not None:
                busy.kill()
                busy.wait()
        for n, times in seconds.items():
            median = statistics.median(times)
            rows.append((condition, n, median, new_tokens / median, pick))
    return rows


def print_threads_table(rows: list[tuple], shape: dict, new_tokens: int, rounds: int) -> None:
    print(f"\nbatch-1 decoding, {shape}, {new_tokens} new tokens, median of {rounds} interleaved rounds, "
          f"{os.cpu_count()} cores")
    print(f"{'condition':<20}  {'threads':>7}  {'seconds':>8}  {'tokens/s':>9}  {'probe picks':>11}")
    for condition, n, median, tps, pick in rows:
        print(f"{condition:<20}  {n:>7}  {median:>8.2f}  {tps:>9.1f}  {pick:>11}")


def time_generate(model, batch, new_tokens, use_cache, context_shift=0, top_k=200):
    """Generated tokens per second of one generate call (all rows), after a short warm-up."""
    x = torch.zeros(batch, 1, dtype=torch.long)
    generate(model, x, 4, top_k=top_k, use_cache=use_cache)  # warm up kernels and allocator
    generators = [torch.Generator().manual_seed(i) for i in range(batch)]
    t0 = time.perf_counter()
    generate(model, x, new_tokens, top_k=top_k, use_cache=use_cache, context_shift=context_shift,
                   generators=generators)
    dt = time.perf_counter() - t0
    return batch * new_tokens / dt, dt


def time_actors(num_actors, batch, new_tokens, context_shift):
    """Aggregate tokens/s of the real batch-sampling path (SamplerActors, planned batches, retries and all):
    num_actors x batch prompts, one batch per actor, from a random-weight checkpoint."""
    import ray

    from nanogpt_ray.checkpoint import save_checkpoint
    from nanogpt_ray.cluster.sampling import sample_prompts, start_sampler_actors, stop_actors
    from nanogpt_ray.config import SampleConfig
    from nanogpt_ray.tokenizer import CharTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        chars = [chr(c) for c in range(32, 32 + 64)] + ["\n"]
        tokenizer = CharTokenizer(sorted(chars))
        os.makedirs(os.path.join(tmp, "data", "bench"))
        with open(os.path.join(tmp, "data", "bench", "meta.json"), "w") as f:
            json.dump(tokenizer.meta(), f)
        model = build_model()
        save_checkpoint({"model": model.state_dict(), "model_args": SHAPE, "iter_num": 0, "best_val_loss": 0.0,
                         "config": {"dataset": "bench", "data_root": os.path.join(tmp, "data")}},
                        os.path.join(tmp, "out", "ckpt.pt"))
        cfg = SampleConfig(out_dir=os.path.join(tmp, "out"), data_root=os.path.join(tmp, "data"), num_samples=1,
                           max_new_tokens=new_tokens, temperature=1.0, top_k=200, device="cpu", batch_size=batch,
                           num_actors=num_actors, context_shift=context_shift)
        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=num_actors, include_dashboard=False, log_to_driver=False)
        actors = start_sampler_actors(cfg)
        try:
            sample_prompts(["\n"] * num_actors, cfg, actors=actors)  # warm up every actor
            prompts = [{"id": i, "prompt": "\n"} for i in range(num_actors * batch)]
            t0 = time.perf_counter()
            rows = sample_prompts(prompts, cfg, actors=actors)
            dt = time.perf_counter() - t0
        finally:
            stop_actors(actors)
            if started:
                ray.shutdown()
    assert all(r["error"] is None for r in rows) and len(rows) == num_actors * batch
    return sum(r["tokens"] for r in rows) / dt, dt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new_tokens", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--context_shift", type=int, default=128, help="tokens the window jumps past block_size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the single-process rows")
    parser.add_argument("--exact_batch16", action="store_true", help="also time batch --batch with the exact window")
    parser.add_argument("--no_ray", action="store_true")
    parser.add_argument("--threads_table", action="store_true",
                        help="only the table of batch-1 decoding with 1 thread vs all, quiet and beside a busy loop")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --threads_table")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 16 tokens, no Ray: proves the script runs")
    args = parser.parse_args(argv)
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    if args.smoke:
        args.new_tokens, args.batch, args.context_shift, args.rounds, args.no_ray = 48, 2, 8, 1, True
    if args.threads_table or args.smoke:
        rows = threads_table(build_model(shape=shape), args.new_tokens, args.context_shift, args.rounds)
        print_threads_table(rows, shape, args.new_tokens, args.rounds)
        if args.threads_table:
            return rows
    torch.set_num_threads(args.threads)
    model = build_model(shape=shape)
    n, shift = args.new_tokens, args.context_shift

    rows = []  # (way, tokens/s, seconds)
    print(f"{shape}, {n} new tokens from a 1-token prompt, top_k=200, torch threads={args.threads}", flush=True)
    measure = [("nanoGPT's way: batch 1, no cache", lambda: time_generate(model, 1, n, use_cache=False)),
               ("ours: KV cache, batch 1, exact window", lambda: time_generate(model, 1, n, True)),
               (f"ours: KV cache, batch 1, shift {shift}", lambda: time_generate(model, 1, n, True, shift))]
    if args.exact_batch16:
        measure.append((f"ours: KV cache, batch {args.batch}, exact window",
                        lambda: time_generate(model, args.batch, n, True)))
    measure.append((f"ours: KV cache, batch {args.batch}, shift {shift}",
                    lambda: time_generate(model, args.batch, n, True, shift)))
    if not args.no_ray:
        measure.append((f"ours: {args.actors} Ray actors x batch {args.batch}, shift {shift}",
                        lambda: time_actors(args.actors, args.batch, n, shift)))
    for way, fn in measure:
        tps, dt = fn()
        rows.append((way, tps, dt))
        print(f"  {way}: {tps:,.1f} tokens/s ({dt:.1f} s)", flush=True)

    base = rows[0][1]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'way':<{width}}  {'tokens/s':>10}  {'seconds':>8}  {'vs nanoGPT':>10}")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 8}  {'-' * 10}")
    for way, tps, dt in rows:
        print(f"{way:<{width}}  {tps:>10,.1f}  {dt:>8.1f}  {tps / base:>9.1f}x")
    return rows


if __name__ == "__main__":
    main()
