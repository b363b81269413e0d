"""Corpora -> nanoGPT's train.bin / val.bin (flat token ids) + meta.json, tokenized in parallel on Ray Data.

    nanogpt-ray prepare shakespeare_char [--input=input.txt]
    nanogpt-ray prepare text --input='corpus/*.jsonl' --field=text

Tiny Shakespeare reproduces nanoGPT's prepare scripts byte for byte (a 90/10 split by characters).
Other corpora are documents: each is encoded with the tokenizer, followed by <|endoftext|>, and sent to
val.bin when a seeded hash of its text falls under val_fraction. That choice depends on the document alone,
so the output does not depend on how the work is split: Ray output is byte-identical to one process.

The pipeline streams: each Ray Data row is one file, which a tokenizer actor reads and turns into token bytes; the
driver appends them in input order to temporary files, renamed into place only when everything succeeded.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
import urllib.request

import numpy as np

from .config import PrepareConfig, load_config, split_args
from .data import token_dtype_for
from .tokenizer import CharTokenizer

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
OPENWEBTEXT_HF = "openwebtext"


class PrepareError(ValueError):
    """Bad input to prepare; one line."""


# ----------------------------------------------------------------------------- writing

class SplitWriter:
    """train.bin and val.bin written under temporary names and renamed into place by commit(), so an
    interrupted prepare never leaves a file that looks complete."""

    def __init__(self, out_dir: str, dtype: str):
        self.out_dir, self.dtype = out_dir, np.dtype(dtype)
        self.tmp = {split: os.path.join(out_dir, f".{split}.bin.partial") for split in ("train", "val")}
        self.files = {split: open(path, "wb") for split, path in self.tmp.items()}
        self.counts = {"train": 0, "val": 0}

    def write(self, split: str, tokens: np.ndarray | bytes) -> None:
        data = tokens if isinstance(tokens, bytes) else np.asarray(tokens, dtype=self.dtype).tobytes()
        self.files[split].write(data)
        self.counts[split] += len(data) // self.dtype.itemsize

    def commit(self, meta: dict) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for split, path in self.tmp.items():
            os.replace(path, os.path.join(self.out_dir, f"{split}.bin"))
        meta_tmp = os.path.join(self.out_dir, ".meta.json.partial")
        with open(meta_tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(meta_tmp, os.path.join(self.out_dir, "meta.json"))  # last: meta.json marks a finished prepare

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

def shakespeare_text(cfg: PrepareConfig) -> tuple[str, str]:
    """(text, source): --input wins, then a copy already in the dataset folder, then the usual download."""
    if cfg.input:
        return read_local_text(cfg.input, cfg.errors), os.path.abspath(cfg.input)
    for candidate in (os.path.join(cfg.output_dir(), "input.txt"), os.environ.get("SHAKESPEARE_INPUT", "")):
        if candidate and os.path.isfile(candidate):
            return read_local_text(candidate, cfg.errors), os.path.abspath(candidate)
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as response:
            text = response.read().decode("utf-8")
    except OSError as e:
        raise PrepareError(f"cannot download tiny Shakespeare ({getattr(e, 'reason', e)}); "
                           "pass a local copy with --input=PATH/input.txt") from None
    with open(os.path.join(cfg.output_dir(), "input.txt"), "w") as f:  # cached for the next run
        f.write(text)
    return text, SHAKESPEARE_URL


def read_local_text(path: str, errors: str) -> str:
    if not os.path.isfile(path):
        raise PrepareError(f"input file {path!r} does not exist")
    with open(path, "rb") as f:
        return decode(f.read(), path, errors)


def decode(data: bytes, path: str, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not UTF-8 (byte {e.start}); pass --errors=replace to substitute U+FFFD") from None


def prepare_shakespeare(cfg: PrepareConfig) -> dict:
    """nanoGPT's data/shakespeare_char and data/shakespeare: first 90% of characters train, the rest val."""
    text, source = shakespeare_text(cfg)
    if not text:
        raise PrepareError(f"{source} is empty: nothing to prepare")
    n = len(text)
    train_text, val_text = text[: int(n * 0.9)], text[int(n * 0.9):]
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


# ----------------------------------------------------------------------------- documents

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


def expand_inputs(spec: str) -> list[str]:
    """Paths from a comma-separated list of paths and globs; URIs (s3://, gs://) through pyarrow."""
    paths: list[str] = []
    for pattern in (p.strip() for p in spec.split(",")):
        if not pattern:
            continue
        if "://" in pattern:
            paths.extend(_expand_uri(pattern))
            continue
        pattern = os.path.abspath(os.path.expanduser(pattern))  # Ray workers do not share our cwd
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else ([pattern] if os.path.exists(pattern) else [])
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise PrepareError(f"no input files match {pattern!r}")
        paths.extend(matches)
    if not paths:
        raise PrepareError("no input files given; pass --input=PATHS")
    return paths


def _expand_uri(pattern: str) -> list[str]:
    import fnmatch

    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(pattern.split("*")[0].rsplit("/", 1)[0] if glob.has_magic(pattern) else pattern)
    scheme = pattern.split("://")[0]
    if not glob.has_magic(pattern):
        if filesystem.get_file_info(path).type != fs.FileType.File:
            raise PrepareError(f"no input file at {pattern!r}")
        return [pattern]
    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    prefix = pattern.split("://", 1)[1]
    matches = sorted(f"{scheme}://{i.path}" for i in infos if i.type == fs.FileType.File and fnmatch.fnmatch(i.path, prefix))
    if not matches:
        raise PrepareError(f"no input files match {pattern!r}")
    return matches


def file_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.lower()
    for ext, kind in ((".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"), (".txt", "txt")):
        if name.endswith(ext):
            return kind
    return "txt"


def documents_of_file(data: bytes, path: str, cfg: dict) -> list[str]:
    """The documents one input file holds, per the file's format."""
    kind = file_format(path, cfg["format"])
    if kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        if cfg["field"] not in table.column_names:
            raise PrepareError(f"{path} has no column {cfg['field']!r} (columns: {', '.join(table.column_names)}); pass --field=")
        return [t for t in table.column(cfg["field"]).to_pylist() if t]
    text = decode(data, path, cfg["errors"])
    if kind == "jsonl":
        docs = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise PrepareError(f"{path}:{number} is not valid JSON") from None
            if not isinstance(record, dict) or cfg["field"] not in record:
                raise PrepareError(f"{path}:{number} has no field {cfg['field']!r}; pass --field=")
            if record[cfg["field"]]:
                docs.append(str(record[cfg["field"]]))
        return docs
    if cfg["txt_mode"] == "line":
        return [line for line in text.splitlines() if line.strip()]
    return [text] if text else []


def in_val(doc: str, seed: int, val_fraction: float) -> bool:
    """A document's split from a seeded hash of its text: independent of order and of parallelism
    (and duplicate documents always land in the same split)."""
    digest = hashlib.blake2b(doc.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


class TokenizeFiles:
    """File paths -> token bytes per split. A callable class so Ray Data builds the tokenizer once per actor."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.encoding = tiktoken_encoding(cfg["tokenizer"])
        self.eot = self.encoding.eot_token
        self.dtype = np.dtype(token_dtype_for(self.encoding.n_vocab))

    def tokenize(self, docs: list[str]) -> dict:
        splits = {"train": [], "val": []}
        for doc, ids in zip(docs, self.encoding.encode_ordinary_batch(docs, num_threads=1)):
            ids.append(self.eot)  # documents are separated by <|endoftext|>
            splits["val" if in_val(doc, self.cfg["seed"], self.cfg["val_fraction"]) else "train"].extend(ids)
        return {split: np.asarray(ids, dtype=self.dtype).tobytes() for split, ids in splits.items()}

    def __call__(self, batch: dict) -> dict:
        out = {"train": [], "val": [], "documents": []}
        for path in batch["path"]:
            docs = documents_of_file(read_bytes(str(path)), str(path), self.cfg)
            result = self.tokenize(docs)
            out["train"].append(result["train"])
            out["val"].append(result["val"])
            out["documents"].append(len(docs))
        return {"train": np.array(out["train"], dtype=object), "val": np.array(out["val"], dtype=object),
                "documents": np.array(out["documents"], dtype=np.int64)}


def read_bytes(path: str) -> bytes:
    if "://" in path:
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def check_first_file(paths: list[str], cfg: PrepareConfig) -> None:
    """Catch a wrong --field before any work: look at the first file's schema or first record."""
    path, kind = paths[0], file_format(paths[0], cfg.format)
    if kind == "parquet" and "://" not in path:
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        if cfg.field not in names:
            raise PrepareError(f"{path} has no column {cfg.field!r} (columns: {', '.join(names)}); pass --field=")
    elif kind == "jsonl" and "://" not in path:
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    record = json.loads(decode(line, path, cfg.errors))
                    if not isinstance(record, dict) or cfg.field not in record:
                        raise PrepareError(f"{path}:1 has no field {cfg.field!r}; pass --field=")
                    break


def file_batches_single(paths: list[str], cfg: dict):
    tokenize = TokenizeFiles(cfg)
    for path in paths:
        yield tokenize({"path": [path]})


def file_batches_ray(paths: list[str], cfg: dict, num_cpus: int):
    import ray  # [ray] only the parallel path needs Ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # output order = input order, so bytes match one process
    # The tokenizer actors read their files themselves: a separate read stage would need a CPU of its own,
    # and with every CPU held by the actor pool Ray Data would wait forever.
    dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=len(paths))
    tasks = min(len(paths), num_cpus or max(1, int(ray.cluster_resources().get("CPU", 1))))
    dataset = dataset.map_batches(TokenizeFiles, fn_constructor_args=(cfg,), batch_size=1, num_cpus=1,
                                  compute=ray.data.ActorPoolStrategy(size=tasks))
    yield from dataset.iter_batches(batch_size=None, prefetch_batches=2)


def _user_error(exc: BaseException) -> PrepareError | None:
    """The PrepareError behind an exception that crossed Ray. Ray Data wraps a UDF's error in
    RayTaskError(UserCodeException), and the original only survives in the text of its traceback."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc) is PrepareError:
            return exc
        match = re.search(r"PrepareError: (.+)", str(exc))
        if match:
            return PrepareError(match.group(1).strip())
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def prepare_documents(cfg: PrepareConfig, paths: list[str] | None = None) -> dict:
    """openwebtext / text: documents from files, tokenized on Ray Data (or in this process)."""
    paths = paths if paths is not None else expand_inputs(cfg.input)
    check_first_file(paths, cfg)
    encoding = tiktoken_encoding(cfg.tokenizer)
    dtype = token_dtype_for(encoding.n_vocab)
    job = dict(format=cfg.format, txt_mode=cfg.txt_mode, field=cfg.field, tokenizer=cfg.tokenizer,
               val_fraction=cfg.resolved_val_fraction(), seed=cfg.seed, errors=cfg.errors)
    parallel = cfg.parallel if cfg.parallel is not None else len(paths) > 1
    started_ray = False
    if parallel:
        import ray  # [ray]

        if not ray.is_initialized():
            ray.init(address=cfg.address or None, log_to_driver=False)  # [ray] RAY_ADDRESS, else a local cluster
            started_ray = True
        batches = file_batches_ray(paths, job, cfg.num_cpus)
    else:
        batches = file_batches_single(paths, job)

    progress = _progress(len(paths), cfg.progress)
    writer = SplitWriter(cfg.output_dir(), dtype)
    documents = 0
    try:
        for batch in batches:
            for train, val, docs in zip(batch["train"], batch["val"], batch["documents"]):
                writer.write("train", bytes(train))
                writer.write("val", bytes(val))
                documents += int(docs)
                progress.update(1)
                progress.set_postfix(tokens=f"{writer.counts['train'] + writer.counts['val']:,}")
        if documents == 0 or writer.counts["train"] == 0:
            raise PrepareError(f"the corpus ({cfg.input}) holds {documents} documents with training tokens: nothing to train on")
        if writer.counts["val"] == 0:
            raise PrepareError(f"no document of {documents:,} fell in the val split; raise --val_fraction "
                               f"(now {cfg.resolved_val_fraction()}) or give more documents")
        meta = {"tokenizer": cfg.tokenizer, "vocab_size": encoding.n_vocab, "dtype": dtype, "source": cfg.input,
                "documents": documents, "train_tokens": writer.counts["train"], "val_tokens": writer.counts["val"],
                "val_fraction": cfg.resolved_val_fraction(), "seed": cfg.seed}
        writer.commit(meta)
    except BaseException as e:
        writer.abort()
        user_error = _user_error(e)
        if user_error is not None:
            raise user_error from None
        raise
    finally:
        progress.close()
        if started_ray:
            import ray

            ray.shutdown()
    return meta


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="tokenizing", disable=not enabled, file=sys.stderr)


def openwebtext_paths(cfg: PrepareConfig) -> list[str]:
    """Local files when --input is given; else the Hugging Face dataset, exported to parquet shards."""
    if cfg.input:
        return expand_inputs(cfg.input)
    try:
        import datasets  # the hf extra
    except ImportError:
        raise PrepareError("openwebtext needs `pip install nanogpt-ray[hf]`, or local files via --input=PATHS") from None
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
            dataset.shard(num_shards, i, contiguous=True).to_parquet(path)
        paths.append(path)
    cfg.field = "text"
    return paths


# ----------------------------------------------------------------------------- entry point

def prepare(cfg: PrepareConfig) -> dict:
    check_writable(cfg.output_dir())
    t0 = time.time()
    if cfg.dataset in ("shakespeare_char", "shakespeare"):
        meta = prepare_shakespeare(cfg)
    elif cfg.dataset == "openwebtext":
        meta = prepare_documents(cfg, openwebtext_paths(cfg))
    else:
        meta = prepare_documents(cfg)
    seconds = time.time() - t0
    tokens = meta["train_tokens"] + meta["val_tokens"]
    print(f"prepared {cfg.output_dir()}: {meta['documents']:,} documents, {meta['train_tokens']:,} train + "
          f"{meta['val_tokens']:,} val tokens ({meta['dtype']}, vocab {meta['vocab_size']:,}) in {seconds:.1f} s "
          f"({tokens / max(seconds, 1e-9):,.0f} tokens/s)", flush=True)
    return meta


def prepare_main(argv: list[str]) -> int:
    from .cli import format_help, wants_help

    if wants_help(argv):
        print(format_help(PrepareConfig, "prepare <dataset>", "Tokenize a corpus into train.bin, val.bin and meta.json."))
        return 0
    files, overrides = split_args(argv)
    # nanoGPT-style: the first bare argument naming a dataset is the dataset, the rest are config files
    if files and not files[0].endswith(".py"):
        overrides = [f"--dataset={files[0]}"] + overrides
        files = files[1:]
    prepare(load_config(PrepareConfig, files, overrides))
    return 0
