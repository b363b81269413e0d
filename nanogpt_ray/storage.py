"""Local paths and storage URIs (s3://, gs://) through pyarrow.fs: the one place that knows a path may be remote.

    read_bytes("s3://runs/exp/shakespeare/checkpoint_2026-01-01_00-00-00.000000/ckpt.pt")
    local_dataset_dir("s3://data/shakespeare_char")   # -> a verified copy in this node's cache

Credentials and endpoints come from the standard environment only, as for any AWS or Google tool:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, a web identity or an instance role), AWS_ENDPOINT_URL
for S3-compatible stores (MinIO, Ceph, moto), GOOGLE_APPLICATION_CREDENTIALS for gs://. No flags of our own.

Pure: pyarrow and stdlib, no Ray and no torch. Ray Train writes its checkpoints through the same pyarrow
filesystems, so what preflight checks here is what the workers will use.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
from contextlib import contextmanager

from .config import UserError, is_uri
from .files import atomic_open

PROBE_TIMEOUT_S = 20.0  # how long preflight waits for an endpoint before saying it does not answer
CREDENTIAL_ENV = {"s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)", "gs": "GOOGLE_APPLICATION_CREDENTIALS"}
ENDPOINT_ENV = {"s3": "AWS_ENDPOINT_URL"}
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's checkpoint folders inside a run's folder
CHECKPOINT_FILE = "ckpt.pt"  # checkpoint.CKPT_NAME (checkpoint imports torch, this module must not)


class StorageError(UserError):
    """A storage URI that cannot be used as given; one line naming the URI and what to check."""


def scheme(path: str) -> str:
    return str(path).split("://", 1)[0].lower() if is_uri(path) else ""


def join(base: str, *parts: str) -> str:
    """os.path.join for local paths; '/'-joined for URIs (whatever the local separator)."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else os.path.basename(os.path.normpath(path))


def check_env(uri: str) -> str:
    """Where to look when `uri` does not work: its credential and endpoint variables, with their values."""
    kind = scheme(uri)
    hints = []
    if kind in ENDPOINT_ENV:
        name = ENDPOINT_ENV[kind]
        hints.append(f"{name}={os.environ[name]!r}" if os.environ.get(name) else f"{name} (unset: the provider's endpoint)")
    hints.append(CREDENTIAL_ENV.get(kind, "the filesystem's credentials"))
    return "check " + " and ".join(hints)


def filesystem(path: str):
    """(pyarrow FileSystem, the path inside it) for a local path or a URI."""
    import pyarrow
    import pyarrow.fs

    if not is_uri(path):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    except pyarrow.ArrowInvalid as e:
        if "Unrecognized filesystem type" in str(e):
            raise StorageError(f"{path!r} has an unknown scheme {scheme(path)!r}; use s3://, gs:// or a local path") from None
        raise StorageError(f"{path!r} is not a storage URI pyarrow can open ({e})") from None
    except OSError as e:
        raise StorageError(explain(path, e)) from None
    return fs, inner.rstrip("/")


def explain(uri: str, error: BaseException) -> str:
    """One line for a storage failure: which of the usual causes it is, and the variable to check."""
    text = " ".join(str(error).split())
    bucket = str(uri).split("://", 1)[-1].split("/", 1)[0]
    if re.search(r"bucket '?[^ ']*'? not found|NoSuchBucket|NO_SUCH_BUCKET|specified bucket does not exist|NOT_FOUND during (HeadBucket|CreateMultipartUpload)", text, re.I) \
            and "NETWORK" not in text:
        return f"{uri}: bucket {bucket!r} does not exist; create it, or fix the URI ({check_env(uri)})"
    if re.search(r"NETWORK_CONNECTION|Could not connect|curlCode|Couldn't resolve|timed out|Timeout", text, re.I):
        return f"{uri}: the storage endpoint does not answer ({text[:160]}); {check_env(uri)}"
    if not has_credentials(uri):  # what a store says to an unsigned request varies: 403, or a failure
        return f"{uri}: no credentials found in the environment ({text[:120]}); set {CREDENTIAL_ENV.get(scheme(uri), 'credentials')}"
    if re.search(r"ACCESS_DENIED|AccessDenied|Forbidden|InvalidAccessKeyId|SignatureDoesNotMatch|\b403\b|"
                 r"UNAUTHENTICATED|PERMISSION_DENIED", text, re.I):
        return f"{uri}: access denied with the credentials in the environment ({text[:160]}); {check_env(uri)}"
    return f"{uri}: {type(error).__name__}: {text[:200]}; {check_env(uri)}"


def has_credentials(uri: str) -> bool:
    """Whether the environment names any credentials for uri's scheme (an instance role cannot be seen here)."""
    kind, env = scheme(uri), os.environ
    if kind == "s3":
        names = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        files = (env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials"),)
        return any(env.get(n) for n in names) or any(os.path.exists(f) for f in files)
    if kind in ("gs", "gcs"):
        return bool(env.get("GOOGLE_APPLICATION_CREDENTIALS")) or os.path.exists(
            os.path.expanduser("~/.config/gcloud/application_default_credentials.json"))
    return True


# ----------------------------------------------------------------------------- reading and writing

def exists(path: str) -> bool:
    import pyarrow.fs

    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def list_dir(path: str) -> list[str]:
    """Names directly inside a folder (or a URI prefix); [] when there is none."""
    import pyarrow.fs

    fs, inner = filesystem(path)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(inner, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def modified_time(path: str) -> float | None:
    """Seconds since the epoch of the file's last write, or None when it does not exist."""
    import pyarrow.fs

    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pyarrow.fs.FileType.NotFound:
        return None
    return info.mtime.timestamp() if info.mtime is not None else 0.0


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """The whole file or nothing: a local file through a temporary name, an object in one upload."""
    if not is_uri(path):
        with atomic_open(path, "wb") as f:
            f.write(data)
        return
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as f:  # an object appears only when its upload completes
        f.write(data)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a local folder's files (recursively) to a URI prefix."""
    import pyarrow.fs

    fs, inner = filesystem(uri)
    pyarrow.fs.copy_files(local_dir, inner, destination_filesystem=fs)


def _upload(local: str, uri: str) -> None:
    """A local file's bytes as one object (a reader sees the old object or the new one)."""
    import shutil

    fs, inner = filesystem(uri)
    with open(local, "rb") as src, fs.open_output_stream(inner) as out:
        shutil.copyfileobj(src, out, 1 << 24)


@contextmanager
def local_input(path: str):
    """A local path holding `path`'s bytes: itself when local; a URI is downloaded to a temporary file (same
    name, so its extension still tells the format) that is removed afterwards."""
    if not is_uri(path):
        yield path
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nanogpt-input-") as tmp:
        local = os.path.join(tmp, basename(path))
        _download(*filesystem(path), local)
        yield local


@contextmanager
def staged_output(path: str, keep_existing: bool = False):
    """A local path to write `path` through: itself when local. For a URI, a temporary file (holding the
    object's current bytes when keep_existing, for a resume) that is uploaded as one object when the block
    ends without an error: readers see the old object or the new one, never half of one."""
    if not is_uri(path):
        yield path
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nanogpt-output-") as tmp:
        local = os.path.join(tmp, basename(path))
        if keep_existing and exists(path):
            _download(*filesystem(path), local)
        yield local
        if os.path.exists(local):
            _upload(local, path)


# ----------------------------------------------------------------------------- preflight

def within(path: str, key: str, probe, timeout_s: float):
    """probe() run in a thread for at most timeout_s (a request to an endpoint that never answers must not hang
    the command); its failure as one line naming the key, the URI and the variable to check."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = probe()
        except BaseException as e:  # noqa: BLE001 - carried to the caller below
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True, name="storage-probe")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise StorageError(f"{key}={path!r}: the storage endpoint did not answer within {timeout_s:g} s; {check_env(path)}")
    error = outcome.get("error")
    if error is not None:
        raise StorageError(f"{key}={error if isinstance(error, StorageError) else explain(path, error)}") from None
    return outcome.get("value")


def check_writable(path: str, key: str, timeout_s: float = PROBE_TIMEOUT_S, create: bool = True) -> None:
    """Write and delete a probe object under `path`, within timeout_s; one line naming the key, the URI and
    the environment variable to check when that fails (unknown scheme, no bucket, no credentials, no answer,
    no write permission). create=False (a dry run) leaves a local path as it was: its nearest existing folder
    must be writable."""
    if not is_uri(path):
        return check_local_writable(path, key, create)

    def probe():
        fs, inner = filesystem(path)
        name = f"{inner}/.nanogpt-write-probe-{os.getpid()}-{threading.get_ident()}"
        with fs.open_output_stream(name) as f:
            f.write(b"ok")
        fs.delete_file(name)

    within(path, key, probe, timeout_s)


def check_local_writable(path: str, key: str, create: bool = True) -> None:
    import tempfile

    if not create:
        folder = os.path.abspath(path)
        while not os.path.exists(folder):
            folder = os.path.dirname(folder)
        if not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
            raise StorageError(f"{key}={path!r} is not writable ({folder} is not a writable folder); "
                               f"pass --{key}=<a writable shared folder or s3:// URI>")
        return
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".nanogpt-write-probe-"):
            pass
    except OSError as e:
        raise StorageError(f"{key}={path!r} is not writable ({type(e).__name__}: {e}); "
                           f"pass --{key}=<a writable shared folder or s3:// URI>") from None


def check_readable(path: str, key: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """A URI that must already hold something (a dataset's file): one line when it does not, or when its store
    cannot be reached."""
    if not is_uri(path) or within(path, key, lambda: exists(path), timeout_s):
        return
    bucket = f"{scheme(path)}://{path.split('://', 1)[1].split('/', 1)[0]}"
    if not within(path, key, lambda: exists(bucket), timeout_s):
        raise StorageError(f"{key}: {path!r}: bucket {bucket!r} does not exist; create it, or fix the URI ({check_env(path)})")
    raise StorageError(f"{key}: {path!r} does not exist; {check_env(path)}")


# ----------------------------------------------------------------------------- checkpoints in a run's folder

def latest_checkpoint_file(path: str) -> str:
    """The ckpt.pt a path means: a file as given; a folder's ckpt.pt (out_dir, one Ray checkpoint); else the
    newest Ray checkpoint_* folder holding a ckpt.pt in a run's folder (Ray names them by time, so the
    lexically last is the latest; a folder without ckpt.pt is an upload still in progress)."""
    if str(path).endswith(".pt"):
        return path
    own = join(path, CHECKPOINT_FILE)
    if exists(own):
        return own
    names = [n for n in list_dir(path) if n.startswith(CHECKPOINT_PREFIX)]
    for name in sorted(names, reverse=True):
        candidate = join(path, name, CHECKPOINT_FILE)
        if exists(candidate):
            return candidate
    return own  # nothing there: the caller's "no checkpoint at ..." names the usual place


# ----------------------------------------------------------------------------- datasets cached on each node

DATASET_MANIFEST = ".nanogpt-cache.json"


def cache_root() -> str:
    """This node's cache: $XDG_CACHE_HOME/nanogpt-ray (default ~/.cache/nanogpt-ray)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nanogpt-ray")


def cache_dir_for(uri: str, kind: str = "datasets") -> str:
    """This node's folder for a URI (kind: datasets, sweeps): bucket/prefix plus a short hash of the whole URI."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", str(uri).split("://", 1)[-1].strip("/"))[-80:]
    return os.path.join(cache_root(), kind, f"{readable}-{hashlib.sha256(str(uri).encode()).hexdigest()[:12]}")


@contextmanager
def file_lock(path: str):
    """An exclusive lock held by one process of this node at a time (the others wait)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_file(path: str, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _local_stamp(path: str) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def local_dataset_dir(dataset_dir: str) -> str:
    """dataset_dir itself when local; for a URI, this node's verified copy of its files (see fetch_dataset)."""
    return fetch_dataset(dataset_dir)[0] if is_uri(dataset_dir) else dataset_dir


def fetch_dataset(uri: str, cache: str | None = None) -> tuple[str, list[str]]:
    """(local folder, names downloaded now): the files of a dataset folder at `uri`, copied once per node.

    Every process of a node takes the cache's file lock in turn: the first downloads, the rest find the copy.
    A cached file is used when its size matches the remote object's and its SHA-256 matches the one taken
    while downloading it (re-hashed whenever the file's size, mtime or inode changed since); otherwise it is
    fetched again. The cache outlives the run, so a restart or the next run reads it at once. Training then
    memory-maps the local files, as nanoGPT does."""
    import pyarrow.fs

    cache = cache or cache_dir_for(uri)
    fs, root = filesystem(uri)
    with file_lock(os.path.join(cache, ".lock")):
        infos = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
                 if i.type == pyarrow.fs.FileType.File]
        if not infos:
            raise StorageError(f"data_root: no dataset files at {uri!r}; upload the prepared folder (train.bin, val.bin, "
                               f"meta.json) there, or {check_env(uri)}")
        manifest_path = os.path.join(cache, DATASET_MANIFEST)
        try:
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            manifest = {}
        fetched = []
        for info in infos:
            local = os.path.join(cache, info.base_name)
            entry = manifest.get(info.base_name)
            remote_mtime = info.mtime.timestamp() if info.mtime is not None else None
            if entry is None or entry.get("remote_mtime") != remote_mtime or not _cached_copy_is_good(local, entry, info.size):
                manifest[info.base_name] = dict(_download(fs, info.path, local), remote_mtime=remote_mtime)
                fetched.append(info.base_name)
                with atomic_open(manifest_path, "w") as f:  # after each file: a kill keeps what is done
                    json.dump(manifest, f)
            elif _local_stamp(local) != entry["stamp"]:  # verified again after a change: remember when
                entry["stamp"] = _local_stamp(local)
                with atomic_open(manifest_path, "w") as f:
                    json.dump(manifest, f)
    return cache, fetched


def _cached_copy_is_good(local: str, entry: dict, remote_size: int) -> bool:
    if not os.path.exists(local) or entry.get("size") != remote_size or os.path.getsize(local) != remote_size:
        return False
    if _local_stamp(local) == entry.get("stamp"):
        return True  # hashed before, and not written since
    return sha256_file(local) == entry.get("sha256")


def _download(fs, remote: str, local: str) -> dict:
    """Stream one object to `local` through a temporary name, hashing on the way."""
    digest = hashlib.sha256()
    with atomic_open(local, "wb", fsync=True) as out, fs.open_input_stream(remote) as src:
        while block := src.read(1 << 24):
            digest.update(block)
            out.write(block)
    return {"size": os.path.getsize(local), "sha256": digest.hexdigest(), "stamp": _local_stamp(local)}
