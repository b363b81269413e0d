"""Every headline figure of the README, regenerated in one command.

    .venv/bin/python benchmarks/report.py              # runs each benchmark below (~15 min on 2 cores), writes
                                                       # docs/report.md and the table between the README's markers
    .venv/bin/python benchmarks/report.py --smoke      # every benchmark in its --smoke mode: proves the plumbing,
                                                       # the figures mean nothing (writes to --out, not the README)

Each headline is one benchmark script run as its own command (the command is printed beside the figure), its
table read back from what it prints. The report records the machine (CPUs, torch, GPU if any), the date and the
load average before and after each benchmark: a figure taken on a busy machine says so. Set NANOGPT_DIR to a
nanoGPT checkout to add nanoGPT's own train.py to the training row.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
COLUMNS = ("what", "figure", "conditions", "command")


def table_rows(output: str) -> list[list[str]]:
    """The cells of every markdown table row printed (header and rule rows included)."""
    rows = []
    for line in output.splitlines():
        if "|" in line and not set(line.replace("|", "").strip()) <= set("-: "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def cell(output: str, row_start: str, column: str) -> str:
    """The cell under `column` (a header's text) in the last row whose first cell starts with row_start."""
    rows = table_rows(output)
    header = next(r for r in rows if column in r)
    row = [r for r in rows if r[0].startswith(row_start)][-1]
    return row[header.index(column)]


def measured(value: str) -> str:
    """A table cell that holds a figure: '-' (a target not reached, a run missing) is no headline."""
    if value.strip() in ("", "-"):
        raise ValueError("the benchmark printed '-' where the headline's figure belongs")
    return value


def sample_speed(output: str) -> str:
    line = [ln for ln in output.splitlines() if re.match(r"ours: KV cache, batch \d+, shift", ln)][-1]
    way, tokens_per_s, _, vs = re.split(r"\s{2,}", line.strip())
    return f"{tokens_per_s} tokens/s ({way.removeprefix('ours: ')}), {vs} nanoGPT's batch-1 uncached sampling"


def serving(output: str) -> str:
    rows = [r for r in table_rows(output) if r[0].endswith("concurrent")]
    busiest = max(rows, key=lambda r: int(r[0].split()[0]))
    return f"{busiest[3]} the throughput of one request at a time with {busiest[0]} clients ({busiest[2]} tokens/s)"


def training(output: str) -> str:
    row = "nanogpt-ray train (local mode)"
    text = (f"{cell(output, row, 'vs bare')} end to end, {cell(output, row, 'steady vs bare')} steady, of a plain "
            f"process running the same loop")
    vs_nanogpt = cell(output, row, "vs nanoGPT")
    return text + (f"; {vs_nanogpt} of nanoGPT's train.py end to end" if vs_nanogpt != "-" else "")


def storage(output: str) -> str:
    table = table_rows(output)
    header = next(r for r in table if "loop blocked s (sync)" in r)
    rows = {r[1]: r for r in table if len(r) > 6 and r[1] in ("S3 server", "local disk")}
    shape, megabytes = rows["S3 server"][0], rows["S3 server"][header.index("MB")]
    blocked = {where: row[header.index("loop blocked s (sync)")] for where, row in rows.items()}
    return (f"the loop waits {blocked['S3 server']} s per {megabytes} MB checkpoint ({shape}) saved to an S3 server, "
            f"{blocked['local disk']} s to local disk")


@dataclass
class Headline:
    what: str
    script: str
    args: tuple[str, ...]
    conditions: str
    figure: Callable[[str], str]


HEADLINES = (
    Headline("training on one machine (nanoGPT's CPU quick start)", "train_speed.py",
             ("--iters=500", "--repeats=3", "--runs=bare,local,ray1,nanogpt"),
             "4x4x128, ctx 64, batch 12, 500 iterations, 3 interleaved repeats, medians", training),
    Headline("modern recipe: wall time to val loss 1.88", "time_to_loss.py",
             ("--recipes=ac", "--sweep_iters=0", "--lr_a=2e-3", "--lr_c=4e-3", "--muon_lr_c=0.02", "--budgets_a=2000",
              "--budgets_c=500", "--repeats=3"),
             "tiny Shakespeare (char), 4x4x128; (a) nanoGPT's recipe at its own 2000 iterations, (c) modern + Muon "
             "planned for 500; 3 interleaved repeats, medians, one run at a time, torch's default threads",
             lambda out: f"{measured(cell(out, '(c)', 'vs (a)'))} of nanoGPT's recipe"),
    Headline("sampling 500 tokens", "sample_speed.py", ("--no_ray",),
             "6x6x384, ctx 256, random weights, one torch thread", sample_speed),
    Headline("serving (OpenAI completions on Ray Serve)", "serve_load.py", ("--clients", "1", "16"),
             "one replica, 6x6x384, 100 tokens per request, clients on the same cores", serving),
    Headline("checkpoints in a bucket", "storage.py", ("--shapes=quick-start",),
             "6x6x384 model with AdamW state, S3 API server (moto) on loopback", storage),
)


def machine() -> str:
    gpu = ""
    try:
        import torch

        gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
        version = f"torch {torch.__version__}"
    except ImportError:
        version = "no torch"
    return f"{os.cpu_count()} CPUs ({platform.machine()}), {version}{gpu}, Python {platform.python_version()}"


def run(headline: Headline, smoke: bool, timeout_s: float) -> dict:
    args = ("--smoke",) if smoke else headline.args
    command = " ".join(("python", f"benchmarks/{headline.script}", *args))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / headline.script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    try:
        figure = headline.figure(done.stdout)
    except (StopIteration, IndexError, ValueError) as e:
        raise SystemExit(f"{command}: no headline in its output ({type(e).__name__}: {e}):\n{done.stdout[-3000:]}")
    return dict(what=headline.what, figure=figure, command=f"`{command}`", output=done.stdout, seconds=seconds,
                conditions=f"{headline.conditions}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")


TRAINING_LOG = re.compile(r"^(iter \d+: |step \d+: |saved checkpoint |tokens per iteration will be|\d+ worker\(s\), )")


def without_training_logs(output: str) -> str:
    """A benchmark's output without the log lines of the runs it timed (their tables keep what they measured)."""
    return "\n".join(line for line in output.splitlines() if not TRAINING_LOG.match(line))


def headline_table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in results]
    return "\n".join(lines)


def embed(readme: pathlib.Path, block: str) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers to put the table between")
    head, rest = text.split(BEGIN, 1)
    readme.write_text(head + BEGIN + "\n" + block + "\n" + END + rest.split(END, 1)[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every benchmark's --smoke mode (figures meaningless)")
    parser.add_argument("--only", default="", help="comma-separated script names to run (default: all)")
    parser.add_argument("--out", default="", help="the report's folder (default: docs/, and the README's table)")
    parser.add_argument("--timeout_s", type=float, default=1800, help="per benchmark")
    args = parser.parse_args(argv)
    chosen = [h for h in HEADLINES if not args.only or h.script in args.only.split(",")]
    results = []
    for headline in chosen:
        print(f"running benchmarks/{headline.script} ...", flush=True)
        results.append(run(headline, args.smoke, args.timeout_s))
        print(f"  {results[-1]['figure']} ({results[-1]['seconds']:.0f} s)", flush=True)
    taken = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}"
    block = f"Taken {taken}{' (--smoke: figures meaningless)' if args.smoke else ''} by `python benchmarks/report.py`.\n\n"
    block += headline_table(results)
    out = pathlib.Path(args.out) if args.out else REPO / "docs"
    out.mkdir(parents=True, exist_ok=True)
    details = "\n\n".join(f"## {r['what']}\n\n{r['command']} ({r['seconds']:.0f} s; {r['conditions']})\n\n"
                          f"```\n{without_training_logs(r['output']).strip()}\n```" for r in results)
    (out / "report.md").write_text(f"# Benchmark report\n\n{block}\n\n{details}\n")
    if not args.out and not args.smoke and not args.only:
        embed(REPO / "README.md", block)
    print("\n" + block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
