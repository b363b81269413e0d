"""`nanogpt-ray train` in Ray Train's local mode: the loop in this process (no ray.init, no workers), and under
torchrun as multi-process DDP. No Ray cluster starts here."""

import os
import subprocess
import sys

import pytest
import ray
import torch

from nanogpt_ray.cluster.train import LocalModeRuntime, launch
from nanogpt_ray.config import TrainConfig, from_dict
from tests.nan_injection import nan_runtime
from tests.train_data import assert_same_training_state, checkpoint_in, make_dataset, tiny_config

pytestmark = pytest.mark.ray  # imports Ray Train (starts no cluster)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESUME = dict(gradient_accumulation_steps=2, eval_interval=5, log_interval=5, dropout=0.1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    if ray.is_initialized():  # left by an earlier module: it would count as a cluster named
        ray.shutdown()
    root = tmp_path_factory.mktemp("data")
    make_dataset(root)
    return root


def _cfg(data_root, out_dir, **overrides) -> TrainConfig:
    return from_dict(TrainConfig, tiny_config(data_root, out_dir, **overrides))



@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("full") / "out"
    launch(_cfg(data_root, out_dir, max_iters=20, **RESUME))
    return checkpoint_in(out_dir)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_one_worker_trains_in_this_process_without_a_ray_cluster(data_root, tmp_path, capsys, num_workers):
    wandb = dict(wandb_log=True, wandb_project="nanogpt-test") if num_workers == 0 else {}  # offline (conftest)
    result = launch(_cfg(data_root, tmp_path / "out", num_workers=num_workers, max_iters=10, eval_interval=5, **wandb))
    out = capsys.readouterr().out
    assert "local mode" in out and "--num_workers=2" in out  # the start line names the mode and the other one
    assert not ray.is_initialized()  # no ray.init: no cluster, no controller, no worker actors
    assert result.metrics["iter"] == 10 and result.metrics["world_size"] == 1
    assert result.metrics["val_loss"] < 4.1  # starts at ln(65) ~ 4.17
    assert result.metrics["cpu_threads"] == torch.get_num_threads()  # torch's default threads, as nanoGPT
    assert checkpoint_in(tmp_path / "out")["iter_num"] == 10  # out_dir/ckpt.pt is the checkpoint that lasts
    assert not (tmp_path / "out" / "ray").exists()  # nothing persisted to a storage_path
    if wandb:
        run_id = checkpoint_in(tmp_path / "out")["resume"]["wandb_run_id"]
        run_file = next((tmp_path / "out" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
        assert b"val/loss" in run_file.read_bytes()


@pytest.mark.timeout(300)
def test_local_mode_resume_gives_the_same_weights_as_an_uninterrupted_run(uninterrupted, data_root, tmp_path):
    out_dir = tmp_path / "out"
    launch(_cfg(data_root, out_dir, max_iters=10, **RESUME))
    result = launch(_cfg(data_root, out_dir, max_iters=20, init_from="resume", **RESUME))  # rerun to resume
    assert result.metrics["resumed_from"] == 10
    assert_same_training_state(checkpoint_in(out_dir), uninterrupted)


@pytest.mark.timeout(300)
def test_local_mode_nan_loss_rolls_back_to_out_dir_checkpoint_and_replays(uninterrupted, data_root, tmp_path):
    # local mode keeps no reported checkpoints (get_all_reported_checkpoints is []): out_dir/ckpt.pt is the rollback
    result = launch(_cfg(data_root, tmp_path / "out", max_iters=20, nan_skip_batches=False, **RESUME),
                    nan_runtime(LocalModeRuntime, 12))
    assert result.metrics["nan_rollbacks"] == 1
    assert_same_training_state(checkpoint_in(tmp_path / "out"), uninterrupted)


@pytest.mark.timeout(300)
def test_torchrun_two_processes_equal_one_process_with_accumulation_two(data_root, tmp_path):
    common = dict(max_iters=5, eval_interval=5, log_interval=5, gradient_accumulation_steps=2, warmup_iters=0)
    launch(_cfg(data_root, tmp_path / "one", **common))
    flags = [f"--{k}={v}" for k, v in tiny_config(data_root, tmp_path / "two", **common).items()
             if k != "resources_per_worker"]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "nanogpt_ray.cli", "train", *flags],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=250)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "local mode" in proc.stdout and "2 workers x 1 each" in proc.stdout
    one, two = checkpoint_in(tmp_path / "one"), checkpoint_in(tmp_path / "two")
    assert two["iter_num"] == 5 and len(two["resume"]["torch_rng"]) == 2  # rank 0 wrote every rank's state
    for key, value in one["model"].items():
        assert (value - two["model"][key]).abs().max().item() <= 1e-6, key
