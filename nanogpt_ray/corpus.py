"""Reading corpora: input files and globs (local or pyarrow URIs), txt/jsonl/parquet, cut into work units.

A work unit is a byte range of a jsonl or line-mode txt file cut at line ends, a parquet row group, or a whole
txt file. `plan_units` checks what it can (files exist, formats, the jsonl field or parquet column, the first
record's bytes) before any tokenizing starts; `documents_of_unit` turns one unit into its documents, on
whichever process (a Ray actor or this one) tokenizes it.
"""

from __future__ import annotations

import glob
import json
import os

from .config import PrepareConfig, UserError


class PrepareError(UserError):
    """Bad input to prepare; one line."""


def decode(data: bytes, path: str, errors: str, offset: int = 0) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not UTF-8 (byte {offset + e.start:,}); "
                           "pass --errors=replace to substitute U+FFFD") from None


def expand_inputs(spec: str) -> list[str]:
    """Paths from a comma-separated list of paths and globs; URIs (s3://, gs://, file://) through pyarrow."""
    paths: list[str] = []
    for pattern in (p.strip() for p in spec.split(",")):
        if not pattern:
            continue
        if "://" in pattern:
            paths.extend(_expand_uri(pattern))
            continue
        pattern = os.path.abspath(os.path.expanduser(pattern))  # Ray workers do not share our cwd
        if not glob.has_magic(pattern) and not os.path.isfile(pattern):
            raise PrepareError(f"input file {pattern!r} does not exist")
        matches = [m for m in sorted(glob.glob(pattern)) if os.path.isfile(m)]
        if not matches:
            raise PrepareError(f"no input files match {pattern!r}")
        paths.extend(matches)
    if not paths:
        raise PrepareError("no input files given; pass --input=PATHS")
    return paths


def _expand_uri(pattern: str) -> list[str]:
    import fnmatch

    from pyarrow import fs

    scheme, rest = pattern.split("://", 1)
    try:
        if not glob.has_magic(pattern):
            filesystem, path = fs.FileSystem.from_uri(pattern)
            if filesystem.get_file_info(path).type != fs.FileType.File:
                raise PrepareError(f"input file {pattern!r} does not exist")
            return [pattern]
        base = pattern[: min(pattern.find(c) for c in "*?[" if c in pattern)].rsplit("/", 1)[0]
        filesystem, path = fs.FileSystem.from_uri(base)
        infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as e:
        if isinstance(e, PrepareError):
            raise
        raise PrepareError(f"cannot list {pattern!r}: {e}") from None
    glob_part = path + pattern[len(base):]  # the pattern in the filesystem's own spelling of paths
    matches = sorted(i.path for i in infos if i.type == fs.FileType.File and fnmatch.fnmatch(i.path, glob_part))
    if not matches:
        raise PrepareError(f"no input files match {pattern!r}")
    prefix = "file://" if scheme == "file" else f"{scheme}://"
    return [prefix + m for m in matches]


def open_input(path: str):
    """A seekable binary file: local, or remote through pyarrow's filesystems."""
    if "://" in path:
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        return filesystem.open_input_file(inner)
    return open(path, "rb")


def file_size(path: str) -> int:
    if "://" in path:
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        return filesystem.get_file_info(inner).size
    return os.path.getsize(path)


def file_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.lower()
    for ext, kind in ((".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"), (".txt", "txt")):
        if name.endswith(ext):
            return kind
    return "txt"


def plan_units(paths: list[str], cfg: PrepareConfig) -> tuple[list[dict], int]:
    """(work units in input order, total input bytes), after checking each file's field or column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    units, total, step = [], 0, cfg.chunk_mb * 2**20
    for path in paths:
        kind, size = file_format(path, cfg.format), file_size(path)
        total += size
        if kind == "parquet":
            with open_input(path) as f:
                try:
                    parquet = pq.ParquetFile(f)
                except pa.ArrowException as e:
                    raise PrepareError(f"{path} is not a parquet file ({e})") from None
                schema = parquet.schema_arrow
                if cfg.field not in schema.names:
                    raise PrepareError(f"{path} has no column {cfg.field!r} (columns: {', '.join(schema.names)}); "
                                       "pass --field=")
                column_type = schema.field(cfg.field).type
                if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
                    raise PrepareError(f"{path}: column {cfg.field!r} holds {column_type}, not text; pass --field=")
                groups = parquet.num_row_groups
            units += [dict(path=path, kind=kind, start=0, end=0, row_group=g) for g in range(groups)]
        elif kind == "jsonl" or cfg.txt_mode == "line":
            if kind == "jsonl":
                check_jsonl_field(path, cfg)
            units += [dict(path=path, kind=kind, start=s, end=min(s + step, size), row_group=-1)
                      for s in range(0, max(size, 1), step)]
        else:
            units.append(dict(path=path, kind=kind, start=0, end=size, row_group=-1))
    if total == 0:
        raise PrepareError(f"the corpus ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}) is empty: nothing to prepare")
    for index, unit in enumerate(units):
        unit["index"] = index
    return units, total


def check_jsonl_field(path: str, cfg: PrepareConfig) -> None:
    """A wrong --field fails before any work: every jsonl file's first record must have it."""
    with open_input(path) as f:
        while True:
            line = read_line(f)
            if not line:
                return
            if line.strip():
                offset = f.tell() - len(line)  # where the first record starts, for the error messages
                break
    record = parse_json_line(decode(line, path, cfg.errors, offset), path, offset)
    if not isinstance(record, dict) or cfg.field not in record:
        keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise PrepareError(f"{path}: the first record has no field {cfg.field!r} (it has: {keys}); pass --field=")


def parse_json_line(line: str, path: str, offset: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise PrepareError(f"{path} (byte {offset:,}): a line that is not valid JSON") from None


def read_line(f) -> bytes:
    """Bytes up to and including the next newline (or the end of the file). pyarrow's files have no readline."""
    parts = []
    while True:
        block = f.read(1 << 16)
        if not block:
            break
        cut = block.find(b"\n")
        if cut >= 0:
            parts.append(block[: cut + 1])
            f.seek(f.tell() - (len(block) - cut - 1))
            break
        parts.append(block)
    return b"".join(parts)


def read_range(path: str, start: int, end: int) -> tuple[bytes, int]:
    """(the lines that begin in [start, end), where they begin). A line belongs to the range it starts in."""
    with open_input(path) as f:
        if start > 0:
            f.seek(start - 1)
            read_line(f)  # the rest of the line that began before start (just the newline if one ends there)
        begin = f.tell()
        if begin >= end:
            return b"", begin
        data = f.read(end - begin)
        if data and not data.endswith(b"\n"):
            data += read_line(f)
        return data, begin


def documents_of_unit(unit: dict, job: dict) -> list[str]:
    """The documents one work unit holds, per its file's format. Empty and blank documents are skipped."""
    path, kind = unit["path"], unit["kind"]
    if kind == "parquet":
        import pyarrow.parquet as pq

        with open_input(path) as f:
            column = pq.ParquetFile(f).read_row_group(unit["row_group"], columns=[job["field"]]).column(0)
        docs = column.to_pylist()
    else:
        data, begin = read_range(path, unit["start"], unit["end"])
        text = decode(data, path, job["errors"], begin)
        if kind == "jsonl":
            docs, offset = [], begin
            for line in text.split("\n"):
                if line.strip():
                    record = parse_json_line(line, path, offset)
                    if not isinstance(record, dict) or job["field"] not in record:
                        raise PrepareError(f"{path} (byte {offset:,}): a record without field {job['field']!r}; pass --field=")
                    value = record[job["field"]]
                    if value is not None and not isinstance(value, str):
                        raise PrepareError(f"{path} (byte {offset:,}): field {job['field']!r} holds "
                                           f"{type(value).__name__}, not text")
                    docs.append(value)
                offset += len(line.encode("utf-8", "surrogateescape")) + 1
        elif kind == "txt" and job["txt_mode"] == "line":
            docs = [line.removesuffix("\r") for line in text.split("\n")]
        else:
            docs = [text]
    return [d for d in docs if d and not d.isspace()]
