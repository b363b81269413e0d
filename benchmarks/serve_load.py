"""Load on `nanogpt-ray serve`: 1, 4, 16 and 64 concurrent streaming clients against one replica, against the
same requests sent one at a time. nanoGPT's shakespeare-char shape (6 layers, 6 heads, 384 wide, vocab 65,
ctx 256), random weights (speed does not depend on them), 100 new tokens per request.

    .venv/bin/python benchmarks/serve_load.py                      # the table
    .venv/bin/python benchmarks/serve_load.py --clients 1 16 --requests_per_client 2
    .venv/bin/python benchmarks/serve_load.py --smoke              # a tiny model, a few requests: proves it runs

Everything runs on this machine: a local Ray cluster, Serve's HTTP proxy, the replica (--replica_cpus CPUs,
so that many torch threads) and the client threads, which compete with the server for the same cores.
Time to first token (TTFT) is measured to the first non-empty streamed chunk; total latency to [DONE].
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

import httpx
import ray
import torch
from ray import serve

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanogpt_ray.checkpoint import save_checkpoint  # noqa: E402
from nanogpt_ray.cluster.serve import build_app  # noqa: E402
from nanogpt_ray.config import ServeConfig  # noqa: E402
from nanogpt_ray.model import GPT, GPTConfig  # noqa: E402
from nanogpt_ray.tokenizer import CharTokenizer  # noqa: E402

SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False, dropout=0.0)
SMOKE_SHAPE = dict(SHAPE, n_layer=1, n_head=2, n_embd=32, block_size=64)
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # shakespeare_char's 65
PROMPTS = ["ROMEO:\n", "JULIET:\nO Romeo, ", "First Citizen:\nBefore we proceed", "KING HENRY:\nOnce more",
           "MENENIUS:\nWhat work's, my countrymen, in hand?", "Speak, speak.", "All:\nResolved.", "BRUTUS:\n"]


def write_run(root, shape):
    tok = CharTokenizer(list(CHARS))
    os.makedirs(os.path.join(root, "data", "shakespeare_char"))
    with open(os.path.join(root, "data", "shakespeare_char", "meta.json"), "w") as f:
        json.dump(tok.meta(), f)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape))
    ckpt = {"model": model.state_dict(), "optimizer": {}, "model_args": shape, "iter_num": 0, "best_val_loss": 1e9,
            "config": {"dataset": "shakespeare_char", "data_root": os.path.join(root, "data")}}
    save_checkpoint(ckpt, os.path.join(root, "out", "ckpt.pt"))
    return os.path.join(root, "out")


def one_request(client, url, prompt, max_tokens):
    """(ttft_s, total_s, tokens) of one streamed completion."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "top_k": 200,
            "stream": True}
    start, first, tokens = time.perf_counter(), None, 0
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = json.loads(line[6:])["choices"][0]["text"]
            if text and first is None:
                first = time.perf_counter()
            tokens += len(text)  # a char model: one character per token
    return first - start, time.perf_counter() - start, tokens


def run_level(url, clients, requests_per_client, max_tokens):
    results, lock = [], threading.Lock()

    def worker(k):
        with httpx.Client(timeout=300) as client:
            for j in range(requests_per_client):
                r = one_request(client, url, PROMPTS[(k + j) % len(PROMPTS)], max_tokens)
                with lock:
                    results.append(r)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return wall, results


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--requests_per_client", type=int, default=2)
    p.add_argument("--sequential_requests", type=int, default=8, help="requests sent one at a time: the baseline")
    p.add_argument("--max_tokens", type=int, default=100)
    p.add_argument("--replica_cpus", type=float, default=2)
    p.add_argument("--max_batch_size", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="a 1-layer model, 1 and 2 clients, 4 tokens: seconds, figures meaningless")
    args = p.parse_args()
    shape = SHAPE
    if args.smoke:
        shape, args.clients, args.requests_per_client, args.sequential_requests = SMOKE_SHAPE, [1, 2], 1, 2
        args.max_tokens, args.replica_cpus = 4, 1

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory() as root:
        out_dir = write_run(root, shape)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ray.init(address="local", num_cpus=max(2, int(args.replica_cpus)), include_dashboard=False,
                 log_to_driver=False)  # "local": a new cluster even when `ray start` runs one here
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            cfg = ServeConfig(out_dir=out_dir, data_root=os.path.join(root, "data"), model_name="bench", port=port,
                              device="cpu", dtype="float32", cpus_per_replica=args.replica_cpus,
                              max_batch_size=args.max_batch_size, max_ongoing_requests=max(args.clients) * 2,
                              max_queued_requests=max(args.clients) * 4)
            serve.run(build_app(cfg), name="bench", route_prefix="/")
            url = f"http://127.0.0.1:{port}/v1/completions"
            run_level(url, 4, 1, args.max_tokens)  # warm-up: first calls pay for lazy imports and allocation

            wall, seq = run_level(url, 1, args.sequential_requests, args.max_tokens)
            base_tps = sum(r[2] for r in seq) / wall
            rows = [("one at a time", 1, len(seq), base_tps, seq)]
            for c in args.clients:
                wall, res = run_level(url, c, args.requests_per_client, args.max_tokens)
                rows.append((f"{c} concurrent", c, len(res), sum(r[2] for r in res) / wall, res))
        finally:
            serve.shutdown()
            ray.shutdown()

    print(f"\none replica ({args.replica_cpus:g} CPUs, max_batch_size={args.max_batch_size}), {args.max_tokens} new "
          f"tokens per request, {'a 1-layer smoke' if args.smoke else 'shakespeare_char'} shape; load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    print("| clients | requests | tokens/s | vs one at a time | TTFT p50 | TTFT p95 | latency p50 | latency p95 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, _, n, tps, res in rows:
        ttft = [r[0] * 1000 for r in res]
        total = [r[1] * 1000 for r in res]
        print(f"| {name} | {n} | {tps:.0f} | {tps / base_tps:.1f}x | {pct(ttft, .5):.0f} ms | {pct(ttft, .95):.0f} ms | "
              f"{pct(total, .5):.0f} ms | {pct(total, .95):.0f} ms |")


if __name__ == "__main__":
    main()
