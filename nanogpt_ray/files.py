"""Files that appear whole or not at all: written under a temporary name beside the target, then renamed.

A rename within one folder is atomic, so a run killed at any moment leaves the previous file (or none),
never half of a new one. Stdlib only: checkpoints, prepared datasets, sweep results and benchmark JSON all
write through here.

A writer killed with SIGKILL cannot remove its temporary file. Temporary names carry the writer's host and
process id (`.<name>.<host>-<pid>.<random>.partial`), so the next start can tell a dead writer's leftovers
from a live writer's work in progress and remove only those (remove_stale_partials).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager

PARTIAL_SUFFIX = ".partial"
FOREIGN_PARTIAL_AGE_S = 24 * 3600  # another host's leftovers: we cannot ask whether its writer lives


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # names split on dots


def _writer_tag() -> str:
    return f"{_host()}-{os.getpid()}"


def temp_name_beside(path: str) -> str:
    """A fresh temporary name in path's folder, tagged with this writer (see the module docstring)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return tempfile.mktemp(dir=directory, prefix=f".{os.path.basename(path)}.{_writer_tag()}.", suffix=PARTIAL_SUFFIX)


def _writer_is_alive(tag: str) -> bool:
    host, _, pid = tag.rpartition("-")
    if host != _host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_partials(directory: str) -> list[str]:
    """Remove temporary files and folders that writers killed mid-write left in `directory`; returns them.
    A leftover of this host is stale when its writer process is gone; another host's after a day."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        if not (name.startswith(".") and name.endswith(PARTIAL_SUFFIX)):
            continue
        path = os.path.join(directory, name)
        parts = name[: -len(PARTIAL_SUFFIX)].split(".")
        tag = parts[-2] if len(parts) >= 3 else ""
        local = tag.rpartition("-")[0] == _host()
        try:
            stale = not _writer_is_alive(tag) if local else time.time() - os.path.getmtime(path) > FOREIGN_PARTIAL_AGE_S
            if stale:
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
                removed.append(path)
        except FileNotFoundError:
            continue  # its writer finished (renamed it) meanwhile
    return removed


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable: after a power loss the folder still names the new file."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place(source: str, path: str) -> None:
    """Rename a finished file over `path` (same filesystem: no bytes copied) and make the rename durable."""
    os.replace(source, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def default_file_mode() -> int:
    """The mode a plain open() gives a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def open_temp_beside(path: str, mode: str = "wb", encoding: str | None = None):
    """(open file, its temporary path) in path's folder; the caller renames it over `path` when it is complete."""
    tmp = temp_name_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, default_file_mode())  # made 0600 so nobody reads it half-written; finished outputs get the usual mode
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
        if fsync:
            move_into_place(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
