"""DDP against FSDP2 at 2 workers on CPU (gloo): what each worker holds, and what a step costs.

    python benchmarks/fsdp_memory.py            # memory of gpt2 / gpt2-medium, step time of the mini model
    python benchmarks/fsdp_memory.py --steps=5  # a quicker step timing
    python benchmarks/fsdp_memory.py --smoke    # one timed step: proves it runs, the step time means nothing

Memory: the model is built on the meta device (no weights allocated), sharded with the training loop's own
`parallel.shard_model`, and counted from each parameter's local shard (DTensor.to_local()): fp32 parameters,
fp32 gradients (the same shapes) and AdamW's two fp32 moments per parameter. DDP holds the whole model on
every worker. Activations are not counted (they depend on batch and context, not on the parallelism).
Step time: the mini model (4 layers, 4 heads, 128 wide, 65-token vocabulary, context 64, batch 8, 2 micro-steps
per worker), one CPU thread per worker; both parallelisms run the same batches.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from nanogpt_ray.config import GPT2_SHAPES, PADDED_VOCAB_SIZE  # noqa: E402
from nanogpt_ray.model import GPT, GPTConfig  # noqa: E402
from nanogpt_ray.parallel import data_parallel, set_grad_sync, shard_model  # noqa: E402

WORLD = 2
MINI = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=False, dropout=0.0)


def local_numel(p: torch.Tensor) -> int:
    return p.to_local().numel() if hasattr(p, "to_local") else p.numel()


def memory_bytes(shape: dict, parallelism: str, world: int) -> int:
    """fp32 params + grads + AdamW moments on this worker: 16 bytes per locally held parameter."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**shape))
    model = shard_model(model, parallelism, world, "cpu", "float32")
    numel = sum(local_numel(p) for p in model.parameters())  # the tied wte/lm_head counted once
    return 16 * numel


def step_ms(parallelism: str, world: int, steps: int) -> float:
    torch.manual_seed(0)
    model = shard_model(GPT(GPTConfig(**MINI)), parallelism, world, "cpu", "float32")
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    model = data_parallel(model, world, "cpu")
    g = torch.Generator().manual_seed(dist.get_rank())
    times = []
    for _ in range(steps + 2):  # the first two warm up
        dist.barrier()
        t0 = time.perf_counter()
        for micro in range(2):
            set_grad_sync(model, micro == 1)
            X = torch.randint(0, 65, (8, MINI["block_size"]), generator=g)
            (model(X, X)[1] / 2).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.barrier()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times[2:])[len(times[2:]) // 2]  # the median


def worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = {}
    for name in ("gpt2", "gpt2-medium"):
        shape = dict(GPT2_SHAPES[name], block_size=1024, vocab_size=PADDED_VOCAB_SIZE, bias=False, dropout=0.0)
        rows[name] = {p: memory_bytes(shape, p, world) for p in ("ddp", "fsdp")}
    rows["mini step ms"] = {p: step_ms(p, world, steps) for p in ("ddp", "fsdp")}
    with open(f"{out}.{rank}", "w") as f:
        json.dump(rows, f)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="one timed step (the memory rows are exact either way)")
    args = parser.parse_args()
    if args.smoke:
        args.steps = 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(WORLD, port, args.steps, os.path.join(tmp, "rows")), nprocs=WORLD)
        ranks = [json.loads(pathlib.Path(tmp, f"rows.{r}").read_text()) for r in range(WORLD)]
    print(f"| {WORLD} workers, CPU, gloo | DDP per worker | FSDP per worker (max over ranks) | FSDP / DDP |")
    print("|---|---|---|---|")
    for name in ("gpt2", "gpt2-medium"):
        ddp, fsdp = ranks[0][name]["ddp"], max(r[name]["fsdp"] for r in ranks)
        print(f"| {name}: params + grads + AdamW (fp32) | {ddp / 2**20:,.0f} MiB | {fsdp / 2**20:,.0f} MiB | {fsdp / ddp:.3f} |")
    ddp, fsdp = (max(r["mini step ms"][p] for r in ranks) for p in ("ddp", "fsdp"))
    print(f"| mini 4x4x128 step time (median of {args.steps}) | {ddp:.1f} ms | {fsdp:.1f} ms | {fsdp / ddp:.2f} |")


if __name__ == "__main__":
    main()
