"""Corpora -> nanoGPT's train.bin / val.bin (flat token ids) + meta.json, tokenized in parallel on Ray Data.

    nanogpt-ray prepare shakespeare_char [--input=input.txt]
    nanogpt-ray prepare text --input='corpus/*.jsonl' --field=text

Tiny Shakespeare reproduces nanoGPT's prepare scripts byte for byte (a 90/10 split by characters).
Other corpora are documents: each is encoded with the tokenizer, followed by <|endoftext|>, and sent to
val.bin when a seeded hash of its text falls under val_fraction. That choice depends on the document alone,
so the output does not depend on how the work is split: Ray output is byte-identical to one process.

The pipeline streams. The driver cuts the input into work units (corpus.py) (a byte range of a jsonl or line-mode txt file
cut at line ends, a parquet row group, a whole txt file), checks what it can before any work, and hands the
units to Ray Data: tokenizer actors read their unit and return its token bytes (map_batches), and the driver
appends them in input order to temporary files that are renamed into place only when everything succeeded.
Memory is a few units per actor, whatever the size of the corpus.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.request

import numpy as np

from .config import SHAKESPEARE_URL, PrepareConfig
from .corpus import PrepareError, decode, documents_of_unit, expand_inputs, plan_units
from .files import atomic_write_text, open_temp_beside
from .tokenizer import CharTokenizer, token_dtype_for

OPENWEBTEXT_HF = "openwebtext"
PARALLEL_MIN_BYTES = 64 * 2**20  # parallel=None: below this, starting a local Ray cluster costs more than it saves


class SplitWriter:
    """train.bin and val.bin written under temporary names and renamed into place by commit(), so an
    interrupted prepare never leaves a file that looks complete."""

    def __init__(self, out_dir: str, dtype: str):
        self.out_dir, self.dtype = out_dir, np.dtype(dtype)
        self.tmp, self.files = {}, {}
        for split in ("train", "val"):
            self.files[split], self.tmp[split] = open_temp_beside(os.path.join(out_dir, f"{split}.bin"))
        self.counts = {"train": 0, "val": 0}

    def write(self, split: str, tokens) -> None:
        data = tokens if isinstance(tokens, bytes) else np.asarray(tokens, dtype=self.dtype).tobytes()
        self.files[split].write(data)
        self.counts[split] += len(data) // self.dtype.itemsize

    def commit(self, meta: dict) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        meta_path = os.path.join(self.out_dir, "meta.json")
        if os.path.exists(meta_path):
            os.unlink(meta_path)  # a kill between the renames below leaves no meta.json that vouches for a mix
        for split, path in self.tmp.items():
            os.replace(path, os.path.join(self.out_dir, f"{split}.bin"))
        atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")  # last: meta.json marks a finished prepare

    def abort(self) -> None:
        for split, f in self.files.items():
            f.close()
            if os.path.exists(self.tmp[split]):
                os.unlink(self.tmp[split])


def check_writable(out_dir: str) -> None:
    """Fail before any work when the output folder cannot be created or written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-check-"):
            pass
    except OSError as e:
        raise PrepareError(f"cannot write to {out_dir}: {e.strerror or e}; choose another --data_root") from None


# ----------------------------------------------------------------------------- tiny Shakespeare

# The project ships tiny Shakespeare (gzip, 0.4 MB) so the quick start works offline; found beside the
# package when running from the repository or an editable install.
SHIPPED_SHAKESPEARE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "data", "shakespeare_char", "input.txt.gz")


def shakespeare_source(cfg: PrepareConfig) -> str:
    """Where the text comes from: --input wins, then a copy in the dataset folder (ours or the sibling
    Shakespeare's), then the copy shipped with the project unless --url names another source, then cfg.url."""
    if cfg.input:
        if not os.path.isfile(cfg.input):
            raise PrepareError(f"input file {cfg.input!r} does not exist")
        return os.path.abspath(cfg.input)
    for name in (cfg.output_name or cfg.dataset, "shakespeare_char", "shakespeare"):
        candidate = os.path.join(cfg.data_root, name, "input.txt")
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    if cfg.url == SHAKESPEARE_URL and os.path.isfile(SHIPPED_SHAKESPEARE):  # the same text, no network
        return SHIPPED_SHAKESPEARE
    return cfg.url


def shakespeare_text(source: str, cfg: PrepareConfig) -> str:
    if os.path.isfile(source):
        with (gzip.open if source.endswith(".gz") else open)(source, "rb") as f:
            return decode(f.read(), source, cfg.errors)
    try:
        with urllib.request.urlopen(source, timeout=30) as response:
            data = response.read()
    except (OSError, ValueError) as e:
        raise PrepareError(f"cannot download tiny Shakespeare from {source} ({getattr(e, 'reason', e)}); "
                           "pass a local copy with --input=PATH/input.txt") from None
    text = decode(data, source, cfg.errors)
    atomic_write_text(os.path.join(cfg.output_dir(), "input.txt"), text)  # the local cache of the next run
    return text


def prepare_shakespeare(cfg: PrepareConfig) -> dict:
    """nanoGPT's data/shakespeare_char and data/shakespeare: the first 90% of characters train, the rest val;
    a char vocabulary of sorted(set(text)), or tiktoken's encode_ordinary of each part."""
    source = shakespeare_source(cfg)
    check_writable(cfg.output_dir())
    text = shakespeare_text(source, cfg)
    if not text:
        raise PrepareError(f"{source} is empty: nothing to prepare")
    n = len(text)
    train_fraction = 0.9 if cfg.val_fraction is None else 1 - cfg.val_fraction
    train_text, val_text = text[: int(n * train_fraction)], text[int(n * train_fraction):]
    if cfg.dataset == "shakespeare_char":
        tokenizer = CharTokenizer.from_text(text)
        encode, meta = tokenizer.encode, tokenizer.meta()
    else:
        encoding = tiktoken_encoding(cfg.tokenizer)
        encode, meta = encoding.encode_ordinary, {"tokenizer": cfg.tokenizer, "vocab_size": encoding.n_vocab}
    meta["dtype"] = token_dtype_for(meta["vocab_size"])
    writer = SplitWriter(cfg.output_dir(), meta["dtype"])
    try:
        writer.write("train", encode(train_text))
        writer.write("val", encode(val_text))
        meta.update(source=source, documents=1, train_tokens=writer.counts["train"], val_tokens=writer.counts["val"])
        writer.commit(meta)
    except BaseException:
        writer.abort()
        raise
    return meta


# ----------------------------------------------------------------------------- input files

def tiktoken_encoding(name: str):
    """GPT-2 through our offline-capable loader; other tiktoken encodings by name."""
    if name in ("gpt2", "r50k_base"):
        from .tokenizer import gpt2_encoding

        return gpt2_encoding()
    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except ValueError:
        raise PrepareError(f"unknown tokenizer {name!r}; use gpt2 or a tiktoken encoding such as cl100k_base") from None


def in_val(doc: str, seed: int, val_fraction: float) -> bool:
    """A document's split from a seeded hash of its text: independent of order and of parallelism
    (and duplicate documents always land in the same split)."""
    digest = hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


# ----------------------------------------------------------------------------- tokenizing

class TokenizeUnits:
    """Work units -> token bytes per split. A callable class, so Ray Data builds the tokenizer once per actor.

    A PrepareError (bad bytes, a bad record) travels back as the row's `error`: the driver raises it when it
    reaches that unit in input order, so the first bad file is the one named, as in a single-process run.
    """

    def __init__(self, job: dict):
        self.job = job
        self.encoding = tiktoken_encoding(job["tokenizer"])
        self.eot = self.encoding.eot_token
        self.dtype = np.dtype(token_dtype_for(self.encoding.n_vocab))

    def tokenize(self, docs: list[str]) -> tuple[bytes, bytes]:
        arrays = {"train": [], "val": []}
        # Batches of about 1 MB of text: Python lists of ints cost ~36 bytes a token, so a whole unit's
        # worth at once would dwarf the unit itself; numpy holds them in 2.
        start = 0
        while start < len(docs):
            stop, chars = start, 0
            while stop < len(docs) and (stop == start or chars < 2**20):
                chars += len(docs[stop])
                stop += 1
            ids_of = {"train": [], "val": []}
            # num_threads=1: one CPU per actor; Ray runs as many actors as there are CPUs
            for doc, ids in zip(docs[start:stop], self.encoding.encode_ordinary_batch(docs[start:stop], num_threads=1)):
                ids.append(self.eot)  # documents are separated (and ended) by <|endoftext|>
                ids_of["val" if in_val(doc, self.job["seed"], self.job["val_fraction"]) else "train"].append(ids)
            for split, lists in ids_of.items():
                if lists:
                    arrays[split].append(np.fromiter((t for ids in lists for t in ids), dtype=self.dtype,
                                                     count=sum(map(len, lists))))
            start = stop
        return tuple(np.concatenate(arrays[s]).tobytes() if arrays[s] else b"" for s in ("train", "val"))

    def __call__(self, batch: dict) -> dict:
        out = {"index": [], "train": [], "val": [], "documents": [], "error": []}
        for i in range(len(batch["index"])):
            unit = dict(path=str(batch["path"][i]), kind=str(batch["kind"][i]), start=int(batch["start"][i]),
                        end=int(batch["end"][i]), row_group=int(batch["row_group"][i]))
            train = val = b""
            docs, error = [], ""
            try:
                docs = documents_of_unit(unit, self.job)
                train, val = self.tokenize(docs)
            except PrepareError as e:
                error = str(e)
            out["index"].append(int(batch["index"][i]))
            out["train"].append(train)
            out["val"].append(val)
            out["documents"].append(len(docs))
            out["error"].append(error)
        return {"index": np.array(out["index"], dtype=np.int64), "train": np.array(out["train"], dtype=object),
                "val": np.array(out["val"], dtype=object), "documents": np.array(out["documents"], dtype=np.int64),
                "error": np.array(out["error"], dtype=object)}


def tokenized_single(units: list[dict], job: dict):
    """The same work in this process, one unit at a time."""
    tokenize = TokenizeUnits(job)
    for unit in units:
        yield tokenize({key: [value] for key, value in unit.items()})


def prepare_documents(cfg: PrepareConfig, paths: list[str], parallel_batches=None) -> dict:
    """openwebtext / text: documents from files, tokenized in this process or, through `parallel_batches`
    (cluster/prepare.py's Ray Data pipeline: (cfg, units, job) -> batches), in parallel."""
    units, total_bytes = plan_units(paths, cfg)
    encoding = tiktoken_encoding(cfg.tokenizer)
    check_writable(cfg.output_dir())  # everything is checked: from here on, work
    dtype = token_dtype_for(encoding.n_vocab)
    job = dict(txt_mode=cfg.txt_mode, field=cfg.field, tokenizer=cfg.tokenizer,
               val_fraction=cfg.resolved_val_fraction(), seed=cfg.seed, errors=cfg.errors)
    parallel = cfg.parallel if cfg.parallel is not None else total_bytes >= PARALLEL_MIN_BYTES and len(units) > 1
    if parallel and parallel_batches is None:
        if cfg.parallel:
            raise PrepareError("parallel=True tokenizes on Ray: run `nanogpt-ray prepare`, or call "
                               "nanogpt_ray.cluster.prepare.prepare")
        parallel = False
    batches = parallel_batches(cfg, units, job) if parallel else tokenized_single(units, job)

    progress = _progress(len(units), cfg.progress)
    writer = SplitWriter(cfg.output_dir(), dtype)
    documents, next_index, waiting = 0, 0, {}
    try:
        for batch in batches:
            for row in zip(batch["index"], batch["train"], batch["val"], batch["documents"], batch["error"]):
                waiting[int(row[0])] = row[1:]
            while next_index in waiting:  # input order, even if a batch ever arrived early
                train, val, docs, error = waiting.pop(next_index)
                if error:
                    raise PrepareError(str(error))
                writer.write("train", bytes(train))
                writer.write("val", bytes(val))
                documents += int(docs)
                next_index += 1
                progress.update(1)
                progress.set_postfix(tokens=f"{writer.counts['train'] + writer.counts['val']:,}", refresh=False)
        if next_index != len(units):
            raise RuntimeError(f"tokenized {next_index} of {len(units)} work units")
        if documents == 0 or writer.counts["train"] == 0:
            raise PrepareError(f"the corpus ({cfg.input or paths[0]}) holds {documents} documents with training "
                               "tokens: nothing to train on")
        if writer.counts["val"] == 0:
            raise PrepareError(f"no document of {documents:,} fell in the val split; raise --val_fraction "
                               f"(now {cfg.resolved_val_fraction()}) or give more documents")
        meta = {"tokenizer": cfg.tokenizer, "vocab_size": encoding.n_vocab, "dtype": dtype,
                "source": cfg.input or paths[0], "documents": documents, "train_tokens": writer.counts["train"],
                "val_tokens": writer.counts["val"], "val_fraction": cfg.resolved_val_fraction(), "seed": cfg.seed,
                "eot_token": encoding.eot_token}
        writer.commit(meta)
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()
        batches.close()  # the parallel pipeline cleans up now (not at exit, after our error line)
    return meta


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="unit", desc="tokenizing", disable=not enabled, file=sys.stderr)


def openwebtext_paths(cfg: PrepareConfig) -> list[str]:
    """Local files when --input is given; else the Hugging Face dataset, exported to parquet shards."""
    if cfg.input:
        return expand_inputs(cfg.input)
    try:
        import datasets  # the hf extra
    except ImportError:
        raise PrepareError("openwebtext needs `pip install nanogpt-ray[hf]`, or local parquet/jsonl files via "
                           "--input=PATHS") from None
    check_writable(cfg.output_dir())
    try:
        dataset = datasets.load_dataset(OPENWEBTEXT_HF, split="train")
    except Exception as e:
        raise PrepareError(f"cannot load {OPENWEBTEXT_HF!r} from the Hugging Face hub ({type(e).__name__}); "
                           "pass local parquet/jsonl files with --input=PATHS") from None
    shard_dir = os.path.join(cfg.output_dir(), "hf_shards")
    os.makedirs(shard_dir, exist_ok=True)
    num_shards = 64
    paths = []
    for i in range(num_shards):
        path = os.path.join(shard_dir, f"{i:05d}.parquet")
        if not os.path.exists(path):
            tmp = path + ".partial"
            dataset.shard(num_shards, i, contiguous=True).to_parquet(tmp)
            os.replace(tmp, path)
        paths.append(path)
    cfg.field = "text"
    return paths


# ----------------------------------------------------------------------------- entry point

def prepare(cfg: PrepareConfig, parallel_batches=None) -> dict:
    """Prepare cfg.dataset into cfg.output_dir(); print one summary line; return meta.json's contents.
    parallel_batches: how to tokenize in parallel (cluster/prepare.py passes Ray Data's); None: this process."""
    t0 = time.perf_counter()
    if cfg.dataset in ("shakespeare_char", "shakespeare"):
        meta = prepare_shakespeare(cfg)
    elif cfg.dataset == "openwebtext":
        meta = prepare_documents(cfg, openwebtext_paths(cfg), parallel_batches)
    else:
        meta = prepare_documents(cfg, expand_inputs(cfg.input), parallel_batches)
    seconds = time.perf_counter() - t0
    tokens = meta["train_tokens"] + meta["val_tokens"]
    print(f"prepared {cfg.output_dir()}: {meta['documents']:,} documents, {meta['train_tokens']:,} train + "
          f"{meta['val_tokens']:,} val tokens ({meta['dtype']}, vocab {meta['vocab_size']:,}) in {seconds:.1f} s "
          f"({tokens / max(seconds, 1e-9):,.0f} tokens/s)", flush=True)
    return meta
