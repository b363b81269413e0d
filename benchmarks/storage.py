"""Checkpoint save time and bytes: local disk against an S3 server, and how long the training loop waits per save.

    python benchmarks/storage.py            # quick-start shape and GPT-2 124M shape (random weights)
    python benchmarks/storage.py --smoke    # tiny shape, seconds

What a save costs the loop under Ray Train (cluster/train.py): rank 0 writes ckpt.pt once into a local temporary
folder (torch.save + fsync), then Ray persists it to storage_path. Local storage gets hard links (no bytes
copied); a bucket gets an upload through pyarrow (Ray's default, pyarrow.fs.copy_files), which the loop waits for
in Ray's synchronous mode. Asynchronous upload (ray.train.report(checkpoint_upload_mode=ASYNC)) would leave the
loop only the local write; the last column says what that would save. Reading back: the same bytes, fetched.

The S3 server is $AWS_ENDPOINT_URL when it is set (with credentials and a bucket named by --bucket), else a moto
server started here in its own process on loopback (`pip install 'moto[server]'`): a loopback server measures
our side of the upload (serialising, hashing, request overhead), not a real network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanogpt_ray import storage  # noqa: E402
from nanogpt_ray.checkpoint import CKPT_NAME, save_checkpoint  # noqa: E402
from nanogpt_ray.model import GPT, GPTConfig  # noqa: E402

SHAPES = {
    "smoke": dict(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=65),
    "quick-start": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65),  # shakespeare_char
    "gpt2-124M": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
}


def checkpoint_for(shape: dict) -> dict:
    """A checkpoint as the loop writes it: weights and AdamW's two moments (random weights, one zero step)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape, bias=False, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": shape, "iter_num": 1,
            "best_val_loss": 1.0, "config": {}}


def start_moto(bucket: str):
    """A moto S3 server in a child process; returns it with the environment already pointing at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    import pyarrow.fs

    pyarrow.fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True).create_dir(bucket)
    return server


def measure(ckpt: dict, uri: str, repeats: int) -> dict:
    """Median seconds of: the loop's local write, the upload of that folder to `uri`, and reading it back."""
    import pyarrow.fs

    writes, uploads, reads = [], [], []
    size = 0
    for i in range(repeats):
        folder = tempfile.mkdtemp(prefix="nanogpt-bench-ckpt-")
        try:
            t0 = time.perf_counter()
            save_checkpoint(ckpt, os.path.join(folder, CKPT_NAME))  # what rank 0 does in the loop
            writes.append(time.perf_counter() - t0)
            size = os.path.getsize(os.path.join(folder, CKPT_NAME))
            destination = f"{uri}/checkpoint_{i}"
            t0 = time.perf_counter()
            if storage.is_uri(uri):  # what Ray's upload does
                fs, inner = storage.filesystem(destination)
                pyarrow.fs.copy_files(folder, inner, destination_filesystem=fs)
            else:  # local storage: cluster/train.py hands Ray hard links
                os.makedirs(destination)
                os.link(os.path.join(folder, CKPT_NAME), os.path.join(destination, CKPT_NAME))
            uploads.append(time.perf_counter() - t0)
            if not storage.exists(f"{destination}/{CKPT_NAME}"):
                # seen with moto at GPT-2 size: copy_files returned, no object; a table row, not a traceback
                return dict(bytes=size, write_s=writes[-1], upload_s=float("nan"), read_s=float("nan"),
                            note="upload returned but the object is missing")
            t0 = time.perf_counter()
            data = storage.read_bytes(f"{destination}/{CKPT_NAME}")
            reads.append(time.perf_counter() - t0)
            assert len(data) == size
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    median = lambda xs: sorted(xs)[len(xs) // 2]
    return dict(bytes=size, write_s=median(writes), upload_s=median(uploads), read_s=median(reads), note="")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shape, one repeat: proves the script runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket", default="nanogpt-bench")
    parser.add_argument("--shapes", default="quick-start,gpt2-124M", help=f"comma-separated, of {', '.join(SHAPES)}")
    args = parser.parse_args(argv)
    shapes = ["smoke"] if args.smoke else args.shapes.split(",")
    repeats = 1 if args.smoke else args.repeats
    server = None if os.environ.get("AWS_ENDPOINT_URL") else start_moto(args.bucket)
    local_root = tempfile.mkdtemp(prefix="nanogpt-bench-storage-")
    rows = []
    try:
        for name in shapes:
            ckpt = checkpoint_for(SHAPES[name])
            for where, uri in (("local disk", os.path.join(local_root, name)), ("S3 server", f"s3://{args.bucket}/{name}")):
                r = measure(ckpt, uri, repeats)
                # local storage: Ray gets hard links (cluster/train.py), so the loop waits for the write alone
                blocked_sync = r["write_s"] + r["upload_s"]
                rows.append(dict(shape=name, where=where, **r, blocked_sync=blocked_sync, blocked_async=r["write_s"]))
                ckpt_mb = r["bytes"] / 1e6
                print(f"  {name} -> {where}: {ckpt_mb:.1f} MB, write {r['write_s']:.3f} s, upload {r['upload_s']:.3f} s",
                      file=sys.stderr)
    finally:
        shutil.rmtree(local_root, ignore_errors=True)
        if server is not None:
            server.terminate()
            server.wait()
    print(f"\ncheckpoint saves, median of {repeats} (torch {torch.__version__}, {os.cpu_count()} CPUs; "
          f"S3 server: {'moto on loopback' if server else os.environ['AWS_ENDPOINT_URL']})")
    header = ("shape", "storage", "MB", "write s", "upload s", "read back s", "loop blocked s (sync)",
              "loop blocked s (async upload)", "note")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in rows:
        print(" | ".join([r["shape"], r["where"], f"{r['bytes'] / 1e6:.1f}", f"{r['write_s']:.3f}",
                          f"{r['upload_s']:.3f}" + (" (hard link)" if r["where"] == "local disk" else ""), f"{r['read_s']:.3f}",
                          f"{r['blocked_sync']:.3f}", f"{r['blocked_async']:.3f}", r["note"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
