"""Shared test setup: offline data from ../shared/data and quiet, loopback-only Ray."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Set before any test imports tiktoken or ray: tests never touch the network.
if (SHARED_DATA / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DATA / "tiktoken_cache"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shakespeare_path() -> pathlib.Path:
    """The 1,115,394-character tiny Shakespeare corpus, from $SHAKESPEARE_INPUT or ../shared/data."""
    path = pathlib.Path(os.environ.get("SHAKESPEARE_INPUT", SHARED_DATA / "tinyshakespeare" / "input.txt"))
    assert path.is_file(), f"tiny Shakespeare not found at {path}; set SHAKESPEARE_INPUT"
    return path


@pytest.fixture(scope="module")
def s3():
    """A real S3 API server (moto, loopback) with bucket 'runs'; AWS_ENDPOINT_URL and credentials set in the
    environment for the module (request it before any Ray fixture so Ray's processes inherit them)."""
    from tests.s3_server import s3_server

    with s3_server() as server:
        yield server
