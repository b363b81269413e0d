"""storage.py against a real S3 API server (moto's server mode on loopback), no Ray: URIs kept as given,
one-line preflight errors, checkpoints found in a run's folder, datasets cached once per node."""

import json
import multiprocessing
import os
import socket
import time

import pytest

from nanogpt_ray import cli, storage
from nanogpt_ray.config import SampleConfig, TrainConfig, load_config
from tests.train_data import make_dataset, tiny_config


def test_load_config_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainConfig, [], ["--storage_path=s3://runs/exp", "--data_root=gs://data/sets", "--out_dir=out"])
    assert cfg.storage_path == "s3://runs/exp" and cfg.data_root == "gs://data/sets"
    assert cfg.out_dir == str(tmp_path / "out")
    assert cfg.dataset_dir() == "gs://data/sets/openwebtext"
    sample = load_config(SampleConfig, [], ["--ckpt_path=s3://runs/exp/out/ckpt.pt"])
    assert sample.ckpt_path == "s3://runs/exp/out/ckpt.pt"
    assert not (tmp_path / "s3:").exists()


def test_read_write_list_and_latest_checkpoint_in_a_bucket(s3):
    run = "s3://runs/unit/shakespeare"
    storage.write_text(f"{run}/checkpoint_2026-01-01_00-00-01.000000/ckpt.pt", "older")
    storage.write_text(f"{run}/checkpoint_2026-01-01_00-00-02.000000/ckpt.pt", "newer")
    storage.write_text(f"{run}/checkpoint_2026-01-01_00-00-03.000000/.partial_upload", "x")  # no ckpt.pt yet
    assert storage.list_dir(run)[:2] == ["checkpoint_2026-01-01_00-00-01.000000", "checkpoint_2026-01-01_00-00-02.000000"]
    latest = storage.latest_checkpoint_file(run)
    assert latest == f"{run}/checkpoint_2026-01-01_00-00-02.000000/ckpt.pt"
    assert storage.read_text(latest) == "newer"
    assert storage.modified_time(latest) > time.time() - 60 and storage.modified_time(f"{run}/nothing") is None
    assert "unit/shakespeare/checkpoint_2026-01-01_00-00-02.000000/ckpt.pt" in s3.keys("unit/")


# ---------------------------------------------------------------------------- preflight: one line each

def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_unknown_scheme_is_one_line(s3):
    with pytest.raises(storage.StorageError) as e:
        storage.check_writable("s4://runs/exp", "storage_path")
    assert "storage_path='s4://runs/exp' has an unknown scheme 's4'; use s3://, gs://" in _one_line(e)


def test_missing_bucket_names_the_bucket_and_the_endpoint_variable(s3):
    with pytest.raises(storage.StorageError) as e:
        storage.check_writable("s3://no-such-bucket/exp", "storage_path")
    text = _one_line(e)
    assert "bucket 'no-such-bucket' does not exist" in text and f"AWS_ENDPOINT_URL='{s3.endpoint}'" in text


def test_an_endpoint_that_never_answers_fails_within_the_bound(s3, monkeypatch):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers a request
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        t0 = time.time()
        with pytest.raises(storage.StorageError) as e:
            storage.check_writable("s3://runs/exp", "storage_path", timeout_s=1.0)
        assert time.time() - t0 < 5
    assert "did not answer within 1 s" in _one_line(e) and "AWS_ENDPOINT_URL=" in _one_line(e)


def test_no_credentials_and_a_read_only_prefix_are_told_apart(s3, monkeypatch):
    reader = s3.user_with_policy("reader", ["s3:GetObject", "s3:ListBucket"])
    s3.require_signed_requests(True)
    try:
        for key, value in reader.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(storage.StorageError) as e:
            storage.check_writable("s3://runs/readonly", "storage_path")
        assert "s3://runs/readonly: access denied with the credentials in the environment" in _one_line(e)
        for key in reader:
            monkeypatch.delenv(key)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull + ".missing")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        with pytest.raises(storage.StorageError) as e:
            storage.check_writable("s3://runs/exp", "storage_path", timeout_s=30)
        assert "no credentials found in the environment" in _one_line(e) and "AWS_ACCESS_KEY_ID" in _one_line(e)
    finally:
        s3.require_signed_requests(False)


def test_train_with_a_bad_storage_uri_exits_2_in_one_line_before_ray_starts(s3, tmp_path, capsys):
    import ray

    make_dataset(tmp_path / "data")
    flags = [f"--{k}={v}" for k, v in tiny_config(tmp_path / "data", tmp_path / "out").items()]
    assert cli.main(["train", *flags, "--storage_path=s3://missing-bucket/exp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bucket 'missing-bucket' does not exist" in err and "AWS_ENDPOINT_URL" in err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- datasets cached on each node

@pytest.fixture
def dataset_uri(s3, tmp_path):
    folder = make_dataset(tmp_path / "src", name=f"tiny-{time.time_ns()}")
    for name in ("train.bin", "val.bin", "meta.json"):
        s3.client().upload_file(str(folder / name), s3.bucket, f"datasets/{folder.name}/{name}")
    return f"s3://{s3.bucket}/datasets/{folder.name}", folder


def _fetch(uri, cache, queue):
    queue.put(storage.fetch_dataset(uri, cache)[1])


def test_two_processes_on_a_node_download_the_dataset_once(dataset_uri, tmp_path):
    uri, _ = dataset_uri
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fetch, args=(uri, str(tmp_path / "cache"), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    fetched = sorted((queue.get(timeout=60) for _ in procs), key=len)
    for p in procs:
        p.join(timeout=30)
    assert fetched == [[], ["meta.json", "train.bin", "val.bin"]]  # one process downloaded, the other waited


def test_cached_dataset_is_verified_and_a_corrupted_file_is_fetched_again(dataset_uri, tmp_path):
    uri, source = dataset_uri
    cache = str(tmp_path / "cache")
    local, fetched = storage.fetch_dataset(uri, cache)
    assert fetched == ["meta.json", "train.bin", "val.bin"]
    assert (tmp_path / "cache" / "train.bin").read_bytes() == (source / "train.bin").read_bytes()
    assert storage.fetch_dataset(uri, cache)[1] == []  # a restart finds the cache
    with open(os.path.join(local, "train.bin"), "r+b") as f:  # same size, one byte flipped
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert storage.fetch_dataset(uri, cache)[1] == ["train.bin"]
    assert (tmp_path / "cache" / "train.bin").read_bytes() == (source / "train.bin").read_bytes()
    os.truncate(os.path.join(local, "val.bin"), 10)
    assert storage.fetch_dataset(uri, cache)[1] == ["val.bin"]


def test_a_dataset_uri_with_nothing_there_is_one_line(s3, tmp_path):
    with pytest.raises(storage.StorageError) as e:
        storage.fetch_dataset("s3://runs/datasets/none", str(tmp_path / "cache"))
    assert "no dataset files at 's3://runs/datasets/none'" in _one_line(e)


def _put_checkpoint(uri: str, iter_num: int) -> None:
    import io

    import torch

    from nanogpt_ray.model import GPT, GPTConfig

    model_args = dict(n_layer=1, n_head=1, n_embd=8, block_size=8, bias=False, vocab_size=65, dropout=0.0)
    buffer = io.BytesIO()  # trained on a char dataset whose meta.json is in the bucket too
    torch.save({"model": GPT(GPTConfig(**model_args)).state_dict(), "model_args": model_args, "iter_num": iter_num,
                "best_val_loss": 1.0, "config": {"dataset": "tiny", "data_root": "s3://runs/watch-data"}}, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def test_serve_watch_follows_a_runs_latest_checkpoint_in_a_bucket(s3):
    from nanogpt_ray.config import ServeConfig
    from nanogpt_ray.serving import checkpoint_version, load_served_model

    run = "s3://runs/watch/out"
    storage.write_text("s3://runs/watch-data/tiny/meta.json", json.dumps(
        {"tokenizer": "char", "vocab_size": 65, "chars": [chr(33 + i) for i in range(65)], "dtype": "uint16"}))
    _put_checkpoint(f"{run}/checkpoint_2026-01-01_00-00-01.000000/ckpt.pt", 20)
    cfg = ServeConfig(ckpt_path=run, device="cpu", watch=True)
    loaded = load_served_model(cfg)
    assert loaded.iter_num == 20 and checkpoint_version(cfg) == loaded.version()
    _put_checkpoint(f"{run}/checkpoint_2026-01-01_00-00-02.000000/ckpt.pt", 40)  # within the same second, often
    assert checkpoint_version(cfg) != loaded.version()  # what the replica's --watch thread polls
    newer = load_served_model(cfg)
    assert newer.iter_num == 40 and newer.sampler.tokenizer.kind == "char"
