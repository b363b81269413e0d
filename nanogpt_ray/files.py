"""Files that appear whole or not at all: written under a temporary name beside the target, then renamed.

A rename within one folder is atomic, so a run killed at any moment leaves the previous file (or none),
never half of a new one. Stdlib only: checkpoints, prepared datasets, sweep results and benchmark JSON all
write through here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager


def open_temp_beside(path: str, mode: str = "wb", encoding: str | None = None):
    """(open file, its temporary path) in path's folder; the caller renames it over `path` when it is complete."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    umask = os.umask(0)  # mkstemp makes 0600 files; finished outputs get the usual 0666 & ~umask
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return os.fdopen(fd, mode, encoding=encoding), tmp


@contextmanager
def atomic_open(path: str, mode: str = "w", fsync: bool = False):
    """Write `path` through a temporary file: renamed into place when the block ends, removed if it raises."""
    f, tmp = open_temp_beside(path, mode, encoding=None if "b" in mode else "utf-8")
    try:
        with f:
            yield f
            if fsync:  # checkpoints: the bytes are on disk before the rename makes them the checkpoint
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_copy(source: str, path: str) -> None:
    with atomic_open(path, "wb", fsync=True) as f, open(source, "rb") as src:
        shutil.copyfileobj(src, f)
