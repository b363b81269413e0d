"""Runs backed by a bucket: a real S3 API server (moto, loopback) and a real 2-CPU Ray cluster. Checkpoints land
as objects, a rerun without its local out_dir continues from the bucket, a killed worker restarts from the
bucket, the dataset comes from the bucket through each node's cache, and sampling reads a bucket checkpoint."""

import json
import os
import shutil
import signal
import threading
import time

import pytest
import ray

from nanogpt_ray import cli
from nanogpt_ray.checkpoint import CKPT_NAME
from nanogpt_ray.cluster.train import launch as train
from nanogpt_ray.config import TrainConfig, from_dict
from tests.train_data import assert_same_training_state, checkpoint_in, make_dataset, tiny_config

pytestmark = pytest.mark.ray

# dropout > 0: a resume must restore every rank's dropout RNG too, or the weights drift apart
COMMON = dict(num_workers=2, max_iters=100, eval_interval=20, log_interval=20, dropout=0.1, max_failures=2)


@pytest.fixture(scope="module")
def bucket_cluster(s3, tmp_path_factory):
    """The dataset uploaded to the bucket; a node cache under tmp; then Ray, which inherits the S3 environment."""
    cache = tmp_path_factory.mktemp("node-cache")
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    folder = make_dataset(tmp_path_factory.mktemp("src"))
    for name in ("train.bin", "val.bin", "meta.json"):
        s3.client().upload_file(str(folder / name), s3.bucket, f"data/tiny/{name}")
    if ray.is_initialized():
        ray.shutdown()
    context = ray.init(address="local", num_cpus=2, include_dashboard=True,
                       runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    yield dict(s3=s3, cache=cache, data_root=f"s3://{s3.bucket}/data", context=context)
    ray.shutdown()
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


def _cfg(env, out_dir, prefix, **overrides) -> TrainConfig:
    values = dict(COMMON, storage_path=f"s3://{env['s3'].bucket}/{prefix}", **overrides)
    return from_dict(TrainConfig, tiny_config(env["data_root"], out_dir, **values))



@pytest.fixture(scope="module")
def uninterrupted(bucket_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    cwd = os.getcwd()
    os.chdir(root)  # a URI taken for a local path would show up here as a folder named 's3:'
    try:
        result = train(_cfg(bucket_cluster, root / "out", "exp"))
    finally:
        os.chdir(cwd)
    return result, root


@pytest.mark.timeout(240)
def test_two_workers_checkpoint_to_the_bucket_with_data_from_the_bucket(bucket_cluster, uninterrupted):
    result, root = uninterrupted
    s3 = bucket_cluster["s3"]
    assert result.metrics["iter"] == 100 and result.metrics["world_size"] == 2
    assert result.checkpoint.path.startswith(f"{s3.bucket}/exp/out/checkpoint_")  # Ray's view: an object prefix
    keys = s3.keys("exp/out/")
    checkpoints = [k for k in keys if k.endswith("/" + CKPT_NAME)]
    assert len(checkpoints) == 2  # num_checkpoints_to_keep
    assert not [p for p in root.rglob("s3:*")] and not (root / "out" / "ray").exists()
    assert checkpoint_in(root / "out")["iter_num"] == 100  # out_dir keeps its nanoGPT meaning: the latest ckpt.pt
    cached = list(bucket_cluster["cache"].glob("nanogpt-ray/datasets/*/train.bin"))
    assert len(cached) == 1  # both workers of the node share one copy


@pytest.mark.timeout(400)
def test_rerun_without_out_dir_and_a_killed_worker_both_continue_from_the_bucket_bit_for_bit(
        bucket_cluster, uninterrupted, tmp_path):
    """One run, interrupted twice: stopped at iteration 20 and rerun with its local out_dir deleted (what a
    replacement node has), then a worker SIGKILLed once the rerun has committed a checkpoint. It ends with the
    weights and optimizer state of the uninterrupted run."""
    from ray.util.state import list_actors

    out_dir = tmp_path / "out"
    train(_cfg(bucket_cluster, out_dir, "resume", max_iters=20))
    shutil.rmtree(out_dir)
    outcome = {}

    def run():
        try:
            outcome["result"] = train(_cfg(bucket_cluster, out_dir, "resume"))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 180
    while not (out_dir / CKPT_NAME).exists():  # written once Ray has committed the rerun's first checkpoint
        assert time.time() < deadline and thread.is_alive(), outcome
        time.sleep(0.05)
    address = bucket_cluster["context"].address_info["gcs_address"]
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                          detail=True)
    assert len(workers) == 2
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in outcome, outcome
    result = outcome["result"]
    assert result.metrics["iter"] == 100
    assert result.metrics["resumed_from"] >= 40  # the restarted group started from the rerun's bucket checkpoint
    assert_same_training_state(checkpoint_in(out_dir), checkpoint_in(uninterrupted[1] / "out"))


@pytest.mark.timeout(120)
def test_sample_from_a_bucket_checkpoint_and_from_a_runs_folder(bucket_cluster, uninterrupted, capsys):
    s3 = bucket_cluster["s3"]
    latest = sorted(k for k in s3.keys("exp/out/") if k.endswith("/" + CKPT_NAME))[-1]
    common = ["--num_samples=1", "--max_new_tokens=8", "--device=cpu", "--seed=7", "--start=!"]
    for source in (f"s3://{s3.bucket}/{latest}", f"s3://{s3.bucket}/exp/out"):  # a file, and a run's latest
        assert cli.main(["sample", f"--ckpt_path={source}", *common]) == 0
    first, second = capsys.readouterr().out.split("---------------")[:2]
    assert first.strip() and first.strip() == second.strip()  # the same checkpoint, the same seed


@pytest.mark.timeout(180)
def test_batch_sampling_reads_prompts_from_and_writes_every_id_once_to_the_bucket(bucket_cluster, uninterrupted):
    s3 = bucket_cluster["s3"]
    prompts = "".join(json.dumps({"id": i, "prompt": "!#"}) + "\n" for i in range(6))
    s3.client().put_object(Bucket=s3.bucket, Key="batch/prompts.jsonl", Body=prompts.encode())
    output = f"s3://{s3.bucket}/batch/results.jsonl"
    argv = ["sample", f"--ckpt_path=s3://{s3.bucket}/exp/out", f"--prompts=s3://{s3.bucket}/batch/prompts.jsonl",
            f"--output={output}", "--max_new_tokens=4", "--num_samples=1", "--device=cpu", "--num_actors=1"]
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--resume=True"]) == 0  # nothing left to do: the bucket's rows are kept, none doubled
    body = s3.client().get_object(Bucket=s3.bucket, Key="batch/results.jsonl")["Body"].read().decode()
    rows = [json.loads(line) for line in body.splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(6))
    assert all(r["completion"] and r["error"] is None for r in rows)


@pytest.mark.timeout(400)
def test_asha_sweep_to_the_bucket_then_resume_from_it(bucket_cluster, tmp_path, monkeypatch):
    import dataclasses

    from nanogpt_ray.cluster.tune import run_sweep
    from nanogpt_ray.config import SweepConfig
    from tests.sweep_data import TRAIN, write_dataset

    s3 = bucket_cluster["s3"]
    monkeypatch.chdir(tmp_path)  # a URI taken for a local path would show up here as a folder named 's3:'
    train = dict(TRAIN, data_root=write_dataset(tmp_path), max_iters=40, lr_decay_iters=40)
    sweep = SweepConfig(train_overrides=train, learning_rates=[3e-3, 1e-5], model_sizes=["tiny"], scheduler="asha",
                        grace_period=20, reduction_factor=2, workers_per_trial=1, cpus_per_worker=0.99,
                        storage_path=f"s3://{s3.bucket}/sweeps", sweep_name="asha")
    report = run_sweep(sweep)
    assert len(report.rows) == 2 and all(r["status"] == "done" for r in report.rows), report.rows
    keys = s3.keys("sweeps/asha/")
    for name in ("results.csv", "best_config.py", "tuner.pkl"):
        assert f"sweeps/asha/{name}" in keys, keys
    assert any(k.startswith("sweeps/asha/plots/") and k.endswith(".png") for k in keys)
    assert any("/trials/" in k and k.endswith("/" + CKPT_NAME) for k in keys)  # the trials' Ray checkpoints
    assert not list(tmp_path.glob("s3:*"))
    again = run_sweep(dataclasses.replace(sweep, resume=True))  # restored from the bucket: finished trials kept
    assert sorted((r["trial"], r["iters_run"]) for r in again.rows) == sorted((r["trial"], r["iters_run"]) for r in report.rows)
