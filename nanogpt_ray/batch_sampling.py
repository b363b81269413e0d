"""Batch sampling without Ray: prompt files in, keyed result rows out. Pure: torch, tokenizer, stdlib
(pyarrow only where a .parquet file is read or written).

The pieces cluster/sampling.py wires into Ray, each usable (and tested) on its own:

    records = read_prompts("prompts.jsonl")              # {'id', 'prompt', optional per-row settings}
    rows = expand_rows(records, cfg)                     # one SampleRow per prompt and sample index
    for batch in plan_batches(rows, batch_size=16):      # same settings, similar lengths, deterministic
        results = generate_batch(model, tokenizer, batch, block_size)  # validates, tokenizes, generates

Why a row's completion never depends on where it runs: row (seed s, sample j) draws from its own
torch.Generator seeded s + j (s derived from the global seed and the id when the row has none), and
prompts of different lengths are left-padded so each row attends only to its own tokens. Batches are
planned from the input order alone, so 1 actor or 10, a retry or not, every row sees the same batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import typing
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

from .config import SamplingError, SamplingParams, UserError, first_line
from .engine import generate, row_generator
from .sample import PromptError, encode_prompt
from .tokenizer import decode_tokens

RUN_SETTINGS = ("context_shift",)  # sampling parameters set once per run (the actors'), never per row
ROW_SETTINGS = tuple(f.name for f in dataclasses.fields(SamplingParams) if f.name not in RUN_SETTINGS)
"""The sampling parameters a jsonl/parquet row may override; anything else in a row is ignored."""


def _arrow_type(hint) -> str:
    return "float64" if float in (hint, *typing.get_args(hint)) else "int64"


_SETTING_TYPES = typing.get_type_hints(SamplingParams)
OUTPUT_COLUMNS: dict[str, str] = {
    "id": "int64",  # a string column when some id is not an integer (output_schema)
    "sample": "int64", "prompt": "string", "completion": "string", "tokens": "int64",
    **{name: _arrow_type(_SETTING_TYPES[name]) for name in ROW_SETTINGS},
    "error": "string",
}
"""Every result row's columns and their parquet types, in order: the one list of them."""
PROMPT_FORMATS = (".jsonl", ".parquet", ".txt")
OUTPUT_FORMATS = (".jsonl", ".parquet")
SEED_MODULUS = 2**63  # torch.Generator seeds are 64-bit; stay positive in int64 columns too
PROMPTS_SCHEMA = (f"prompts file ({', '.join(PROMPT_FORMATS)}): .txt is one prompt a line (id = line number from 1); "
                  ".jsonl is one object a line and .parquet one row each, with 'prompt' (text), optional 'id' (any "
                  "JSON value; default: the line or row number from 1) and optional per-row settings "
                  f"{', '.join(ROW_SETTINGS)}, e.g. {{\"id\": \"q1\", \"prompt\": \"ROMEO:\", \"max_new_tokens\": 50}}. "
                  f"Output rows (.jsonl or .parquet): {', '.join(OUTPUT_COLUMNS)}.")


class BatchSampleError(UserError):
    """A prompt file or setting a person has to fix; one line."""


# ---------------------------------------------------------------------------- rows

@dataclass
class SampleRow:
    """One prompt and sample index to generate, with the settings it uses."""

    id: object
    sample: int
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int  # the row's seed; the generator is seeded generator_seed(seed, sample)
    error: str | None = None  # set when the row is invalid as given (bad settings)
    token_ids: list[int] = field(default_factory=list)  # filled by tokenize_rows

    def key(self):
        return (self.id, self.sample)

    def settings(self):
        """Rows batch together only when these agree (generate takes them per batch)."""
        return (self.max_new_tokens, self.temperature, self.top_k, self.top_p)

    def params(self, context_shift: int = 0) -> SamplingParams:
        return SamplingParams(*self.settings(), seed=self.seed, context_shift=context_shift)


def derive_seed(global_seed: int, row_id) -> int:
    """A row's seed when it gives none: a hash of (global seed, id), the same in every process
    (Python's hash() of a str is salted per process, so it cannot be used)."""
    digest = hashlib.sha256(f"{global_seed}:{json.dumps(row_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % SEED_MODULUS


def generator_seed(seed: int, sample: int) -> int:
    """Seed of sample j of a row with seed s: s + j, as `nanogpt-ray sample --seed=s` numbers its samples."""
    return (int(seed) + int(sample)) % SEED_MODULUS


def _setting(record: dict, key: str, default):
    value = record.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def expand_rows(records: Iterable[dict], cfg, num_samples: int | None = None) -> Iterator[SampleRow]:
    """One SampleRow per record and sample index 0..num_samples-1. Settings missing from a record come
    from cfg (a SampleConfig or anything with the same attributes). Bad settings become the row's error."""
    num_samples = cfg.num_samples if num_samples is None else num_samples
    for record in records:
        row_id = record["id"]
        prompt = record.get("prompt")
        settings = {key: _setting(record, key, getattr(cfg, key)) for key in ROW_SETTINGS}
        error = None
        try:
            params = SamplingParams(**settings)
        except SamplingError as e:
            error = str(e)
        if prompt is not None and not isinstance(prompt, str):
            error = error or f"prompt must be a string, not {type(prompt).__name__}"
        if error is None:
            if _setting(record, "seed", None) is None:
                params.seed = derive_seed(cfg.seed, row_id)
            row_settings = tuple(getattr(params, key) for key in ROW_SETTINGS)
        else:  # keep what was given (rows_to_table drops what does not fit a column)
            row_settings = tuple(settings[k] for k in ROW_SETTINGS)
        for sample in range(num_samples):
            text = prompt if isinstance(prompt, str) else ("" if prompt is None else str(prompt))
            yield SampleRow(row_id, sample, text, *row_settings, error=error)


# ---------------------------------------------------------------------------- validation and tokens

def prompt_error_and_ids(tokenizer, prompt: str, block_size: int, truncate: bool) -> tuple[str | None, list[int]]:
    """(error, token ids) of one prompt: empty prompts, characters outside a char vocab, and prompts longer
    than block_size (unless truncate keeps their last block_size tokens) are errors."""
    if prompt == "":
        return "empty prompt", []  # a row of a file says what to continue (sample and serve start a new document)
    try:
        ids = encode_prompt(tokenizer, prompt)
    except PromptError as e:
        return str(e), []
    if len(ids) > block_size:
        if not truncate:
            return (f"prompt is {len(ids)} tokens, longer than the model's block_size={block_size}; "
                    "shorten it or pass --truncate=True to keep its last block_size tokens"), []
        ids = ids[-block_size:]
    return None, ids


def tokenize_rows(rows: Iterable[SampleRow], tokenizer, block_size: int, truncate: bool) -> list[SampleRow]:
    """Fill token_ids of every row, or its error; the prompt of several samples is encoded once."""
    out, cache = [], {}
    for row in rows:
        if row.error is None:
            if row.prompt not in cache:
                cache[row.prompt] = prompt_error_and_ids(tokenizer, row.prompt, block_size, truncate)
            row.error, ids = cache[row.prompt]
            row.token_ids = list(ids)
        out.append(row)
    return out


# ---------------------------------------------------------------------------- batches

def plan_batches(rows: Iterable[SampleRow], batch_size: int, window: int | None = None) -> Iterator[list[SampleRow]]:
    """Batches of up to batch_size rows. Rows are read in windows (default 32 batches' worth); inside a
    window they are grouped by settings and sorted by prompt length (in characters: planning needs no
    tokenizer, so the driver can do it), so a batch pads little. Rows that carry an error come out as batches of their own (nothing to generate). Deterministic: the batches
    depend only on the order of the rows, never on actors or timing."""
    window = window or batch_size * 32
    chunk: list[SampleRow] = []

    def flush(chunk):
        bad = [r for r in chunk if r.error is not None]
        good = [r for r in chunk if r.error is None]
        groups: dict = {}
        for r in good:
            groups.setdefault(r.settings(), []).append(r)
        for group in groups.values():
            group.sort(key=lambda r: len(r.prompt))  # characters, known before tokenizing; stable sort
            for i in range(0, len(group), batch_size):
                yield group[i:i + batch_size]
        for i in range(0, len(bad), batch_size):
            yield bad[i:i + batch_size]

    for row in rows:
        chunk.append(row)
        if len(chunk) >= window:
            yield from flush(chunk)
            chunk = []
    if chunk:
        yield from flush(chunk)


class BatchDispatcher:
    """Which planned batch goes to which sampling actor next, and what an actor's death means. Pure
    bookkeeping behind cluster/sampling.run_batches, where Ray only submits, waits and reports deaths.

    Each actor holds up to `in_flight` batches. A batch whose actor died goes back in the queue, to another
    actor where there is one; after `max_attempts` deaths under it, its rows get an error instead. A dead
    process fails every batch it held at once: that is one death of the actor (counted per incarnation),
    and after `max_restarts` deaths (Ray has no restart left) the actor gets no more work."""

    def __init__(self, num_actors: int, batches: Iterable[list[SampleRow]], in_flight: int, max_attempts: int,
                 max_restarts: int):
        self.limits = (in_flight, max_attempts, max_restarts)
        self.alive = set(range(num_actors))
        self.deaths = [0] * num_actors
        self.incarnation = [0] * num_actors  # bumped at each counted death: later failures of the same process are not new deaths
        self.in_flight = [0] * num_actors
        self.retries: deque = deque()  # (batch, attempts so far, actor to avoid)
        self.batches = iter(batches)
        self.exhausted = False
        self.resubmitted = 0

    def _next_batch(self, actor: int):
        for position, (batch, attempts, avoid) in enumerate(self.retries):
            if avoid != actor or len(self.alive) == 1:
                del self.retries[position]
                return batch, attempts
        if self.exhausted:
            return None
        batch = next(self.batches, None)
        if batch is None:
            self.exhausted = True
            return None
        return batch, 0

    def assignments(self) -> list[tuple[int, list[SampleRow], int, int]]:
        """(actor, batch, attempts, incarnation) to submit now: every alive actor filled up to in_flight."""
        out = []
        for actor in sorted(self.alive, key=lambda i: self.in_flight[i]):
            while self.in_flight[actor] < self.limits[0]:
                item = self._next_batch(actor)
                if item is None:
                    break
                out.append((actor, item[0], item[1], self.incarnation[actor]))
                self.in_flight[actor] += 1
        return out

    def finished(self, actor: int) -> None:
        self.in_flight[actor] -= 1

    def actor_died(self, actor: int, batch: list[SampleRow], attempts: int, incarnation: int) -> list[dict] | None:
        """The actor died under this batch: error rows when the batch is out of attempts, else None (queued again)."""
        self.in_flight[actor] -= 1
        if incarnation == self.incarnation[actor]:
            self.incarnation[actor] += 1
            self.deaths[actor] += 1
            if self.deaths[actor] > self.limits[2]:
                self.alive.discard(actor)
        if attempts + 1 >= self.limits[1]:
            return [result_row(r, error=f"sampling actor died {attempts + 1} times on this batch") for r in batch]
        self.retries.append((batch, attempts + 1, actor))
        self.resubmitted += 1
        return None

    def work_left(self) -> bool:
        return bool(self.retries) or not self.exhausted


def left_pad(token_lists: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, list[int]]:
    """(B, T) tensor of rows left-padded to the longest, and each row's length."""
    lengths = [len(ids) for ids in token_lists]
    width = max(lengths)
    x = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    for i, ids in enumerate(token_lists):
        x[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
    return x, lengths


def result_row(row: SampleRow, completion: str | None = None, tokens: int = 0, error: str | None = None) -> dict:
    """The output row of a SampleRow: OUTPUT_COLUMNS, the ones a SampleRow lacks from the arguments."""
    outcome = {"completion": completion, "tokens": tokens, "error": error if error is not None else row.error}
    return {name: outcome[name] if name in outcome else getattr(row, name) for name in OUTPUT_COLUMNS}


@torch.no_grad()
def generate_batch(model, tokenizer, batch: list[SampleRow], block_size: int, truncate: bool = False,
                   device="cpu", ctx=None, context_shift: int = 0) -> list[dict]:
    """Result rows of one planned batch, in its order: each row is validated and tokenized (tokenize_rows),
    rows with an error pass through with it, the others generate together. context_shift: see engine.generate
    (0, the default, is nanoGPT's exact sliding window past block_size)."""
    batch = tokenize_rows(batch, tokenizer, block_size, truncate)
    good = [r for r in batch if r.error is None]
    results = {r.key(): result_row(r) for r in batch if r.error is not None}
    if good:
        assert all(r.settings() == good[0].settings() for r in good), "a batch mixes settings; use plan_batches"
        params = good[0].params(context_shift)
        x, lengths = left_pad([r.token_ids for r in good])
        x = x.to(device)
        generators = [row_generator(device, generator_seed(r.seed, r.sample)) for r in good]
        padded = len(set(lengths)) > 1
        with ctx if ctx is not None else contextlib.nullcontext():
            y = generate(model, x, **params.generation_kwargs(), prompt_lengths=lengths if padded else None,
                         generators=generators)
        new = y[:, x.size(1):].tolist()
        for r, ids in zip(good, new):
            results[r.key()] = result_row(r, decode_tokens(tokenizer, ids), len(ids))
    return [results[r.key()] for r in batch]


def sample_rows(model, tokenizer, rows: Iterable[SampleRow], block_size: int, batch_size: int = 16,
                truncate: bool = False, device="cpu", ctx=None, context_shift: int = 0) -> Iterator[dict]:
    """Everything in one process (the reference the Ray paths must match): batch, validate, generate."""
    for batch in plan_batches(rows, batch_size):
        yield from generate_batch(model, tokenizer, batch, block_size, truncate, device, ctx, context_shift)


# ---------------------------------------------------------------------------- prompt files

def _check_format(path: str, formats, what: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in formats:
        raise BatchSampleError(f"{what} {path!r} must end in {', '.join(formats)}")
    return ext


def _utf8_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of a UTF-8 file; a line that is not UTF-8 fails naming the file, the line and
    the byte, where reading in text mode would fail with a bare UnicodeDecodeError somewhere in a buffer."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BatchSampleError(f"{path}:{number} is not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at "
                                       f"column {e.start + 1}); save the prompts as UTF-8") from None
            # binary mode keeps Windows line ends; text mode (what a reader expects) turns them into \n
            yield number, (text[:-2] + "\n" if text.endswith("\r\n") else text)


def read_prompts(path: str) -> Iterator[dict]:
    """Records {'id', 'prompt', settings...} of a prompt file. .txt: one prompt a line, id = line number
    (from 1). .jsonl: one object a line with 'prompt' and optional 'id' (default: line number) and settings.
    .parquet: a 'prompt' column, optional 'id' (default: row number from 1) and setting columns."""
    ext = _check_format(path, PROMPT_FORMATS, "prompts file")
    if os.path.isdir(path):
        raise BatchSampleError(f"prompts file {path!r} is a directory; pass one .txt, .jsonl or .parquet file")
    if not os.path.isfile(path):
        raise BatchSampleError(f"prompts file {path!r} does not exist")
    if ext == ".txt":
        for number, line in _utf8_lines(path):
            yield {"id": number, "prompt": line[:-1] if line.endswith("\n") else line}
    elif ext == ".jsonl":
        for number, line in _utf8_lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BatchSampleError(f"{path}:{number} is not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise BatchSampleError(f"{path}:{number} must be a JSON object with a 'prompt'")
            if "prompt" not in record:
                raise BatchSampleError(f"{path}:{number} has no 'prompt' key")
            record.setdefault("id", number)
            yield record
    else:
        import pyarrow
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (pyarrow.ArrowException, OSError) as e:
            raise BatchSampleError(f"{path} is not a readable parquet file ({type(e).__name__}: {first_line(e)})") from None
        if "prompt" not in parquet.schema_arrow.names:
            raise BatchSampleError(f"{path} has no 'prompt' column (columns: {', '.join(parquet.schema_arrow.names)})")
        columns = [c for c in ("id", "prompt", *ROW_SETTINGS) if c in parquet.schema_arrow.names]
        number = 0
        batches = parquet.iter_batches(batch_size=4096, columns=columns)
        while True:
            try:  # a damaged row group fails only when it is read, after the footer looked fine
                batch = next(batches)
            except StopIteration:
                break
            except (pyarrow.ArrowException, OSError) as e:
                raise BatchSampleError(f"{path} is a damaged parquet file after row {number} "
                                       f"({type(e).__name__}: {first_line(e)})") from None
            for record in batch.to_pylist():
                number += 1
                if record.get("id") is None:
                    record["id"] = number
                yield record


def unique_ids(records: Iterable[dict]) -> Iterator[dict]:
    """Pass records through, failing on an id seen before (outputs are keyed by id)."""
    seen = set()
    for record in records:
        key = json.dumps(record["id"])
        if key in seen:
            raise BatchSampleError(f"id {record['id']!r} appears twice in the prompts; ids must be unique")
        seen.add(key)
        yield record


def id_key(row_id) -> str:
    """A hashable, type-exact key of an id (1 and '1' differ), for resume bookkeeping."""
    return json.dumps(row_id)


# ---------------------------------------------------------------------------- outputs

def partial_path(output: str) -> str:
    """Where a .parquet output streams to until the run ends (then it is converted, atomically)."""
    return output + ".partial.jsonl"


def _read_jsonl_rows(path: str, repair: bool = False) -> list[dict]:
    """Rows of a jsonl file; with repair, a last line cut off by a kill is dropped from the file."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    if repair and data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    rows = []
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line: its row will be generated again
    return rows


def read_results(output: str) -> list[dict]:
    """Every result row written so far to an output (.jsonl, or .parquet plus its partial file)."""
    ext = _check_format(output, OUTPUT_FORMATS, "output")
    if ext == ".jsonl":
        return _read_jsonl_rows(output)
    rows = []
    if os.path.exists(output):
        import pyarrow.parquet as pq

        rows = pq.read_table(output).to_pylist()
    return rows + _read_jsonl_rows(partial_path(output))


def done_keys(output: str) -> set:
    """(id key, sample) of rows already in an output: what --resume skips."""
    return {(id_key(r["id"]), int(r["sample"])) for r in read_results(output)}


def output_schema(rows: list[dict], int_ids: bool | None = None):
    """pyarrow schema of the output columns; id is int64 when every id is an integer, else string."""
    import pyarrow as pa

    if int_ids is None:
        int_ids = all(isinstance(r["id"], int) and not isinstance(r["id"], bool) for r in rows)
    return pa.schema([(name, pa.string() if name == "id" and not int_ids else getattr(pa, kind)())
                      for name, kind in OUTPUT_COLUMNS.items()])


def rows_to_table(rows: list[dict], schema=None):
    import pyarrow as pa

    schema = schema or output_schema(rows)
    if pa.types.is_string(schema.field("id").type):
        rows = [{**r, "id": r["id"] if isinstance(r["id"], str) else json.dumps(r["id"])} for r in rows]
    ints = [k for k, kind in OUTPUT_COLUMNS.items() if kind == "int64" and k != "id"]
    floats = [k for k, kind in OUTPUT_COLUMNS.items() if kind == "float64"]
    clean = []
    for r in rows:  # settings of an error row may be whatever the input had; keep only what fits
        c = {k: r.get(k) for k in OUTPUT_COLUMNS}
        for k in ints:
            if c[k] is not None and not (isinstance(c[k], int) and not isinstance(c[k], bool)):
                c[k] = int(c[k]) if isinstance(c[k], float) and c[k] == int(c[k]) else None
        for k in floats:
            if c[k] is not None and (isinstance(c[k], bool) or not isinstance(c[k], (int, float))):
                c[k] = None
        clean.append(c)
    return pa.Table.from_pylist(clean, schema=schema)


def check_output(output: str) -> str:
    """The output's format, once its folder exists and the output itself is not a folder: checked before any
    prompt is sampled, so no work is done for a result that could not be written."""
    ext = _check_format(output, OUTPUT_FORMATS, "output")
    if os.path.isdir(output):
        raise BatchSampleError(f"output {output!r} is a directory; pass a file path ending in {', '.join(OUTPUT_FORMATS)}")
    directory = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:  # a file where a folder should be, or no permission
        raise BatchSampleError(f"cannot create the output's folder {directory!r} ({e.strerror or type(e).__name__})") from None
    return ext


def require_output(output: str) -> None:
    if not output:
        raise BatchSampleError("--prompts needs --output=FILE (.jsonl or .parquet) for the results")


def read_batch_prompts(prompts: str, output: str) -> list[dict]:
    """The records of a local prompts file (first row of each id), once the output is known to be writable: what
    `sample --prompts` checks before a model loads or Ray starts (its dry run too)."""
    records = list(unique_ids(read_prompts(prompts)))
    if not records:  # say so up front, instead of an empty output that looks like a success
        raise BatchSampleError(f"prompts file {prompts!r} holds no prompts")
    check_output(output)
    return records


class ResultWriter:
    """Streams result rows to an output as batches finish. .jsonl: appended and flushed per batch.
    .parquet: appended to <output>.partial.jsonl, and on close() merged with the rows already in the
    parquet file (resume) into a new file renamed over it, so the parquet is never half-written.
    Without resume an existing output is replaced; with resume its rows are kept."""

    def __init__(self, output: str, resume: bool = False):
        self.output = output
        self.ext = check_output(output)
        self.stream_path = output if self.ext == ".jsonl" else partial_path(output)
        if resume:
            _read_jsonl_rows(self.stream_path, repair=True)  # drop a torn last line before appending
        else:
            for path in (self.stream_path, output):
                if os.path.exists(path):
                    os.unlink(path)
        self.resume = resume
        self.file = open(self.stream_path, "a", encoding="utf-8")
        self.rows_written = 0

    def write(self, rows: list[dict]) -> None:
        self.file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self.file.flush()
        self.rows_written += len(rows)

    def close(self) -> None:
        if self.file.closed:
            return
        self.file.close()
        if self.ext == ".parquet":
            import pyarrow.parquet as pq

            rows = read_results(self.output)  # earlier parquet rows (resume) + this run's stream
            tmp = self.output + ".tmp"
            pq.write_table(rows_to_table(rows), tmp)
            os.replace(tmp, self.output)
            os.unlink(self.stream_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.file.close()  # keep the stream: --resume picks it up
