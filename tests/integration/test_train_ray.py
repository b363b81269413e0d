"""nanoGPT's loop under Ray Train on a real 2-CPU local cluster (gloo, CPU, fp32); `bench --scaling=True`, the same
loop under TorchTrainer with 1 and 2 workers, on the same cluster."""

import json
import os
import signal
import threading
import time

import pytest
import torch

from nanogpt_ray import cli
from nanogpt_ray.checkpoint import CKPT_NAME
from nanogpt_ray.cluster.train import RayRuntime
from nanogpt_ray.cluster.train import launch as train
from nanogpt_ray.config import TrainConfig, from_dict
from nanogpt_ray.preflight import LaunchError
from nanogpt_ray.train_loop import run_bare
from tests.nan_injection import nan_runtime
from tests.nanogpt_contract import assert_nanogpt_reads
from tests.train_data import assert_same_training_state, checkpoint_in, make_dataset, tiny_config

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root)
    return root


def _cfg(data_root, out_dir, **overrides) -> TrainConfig:
    return from_dict(TrainConfig, tiny_config(data_root, out_dir, **overrides))


@pytest.fixture(scope="module")
def two_worker_run(ray_start_2_cpus, data_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp") / "out"
    # nanoGPT's data order (the default): each rank draws from its own global generator, rank 0 evaluates
    result = train(_cfg(data_root, out_dir, num_workers=2, max_iters=30, wandb_log=True, wandb_project="nanogpt-test",
                        data_order="nanogpt"))
    return result, out_dir


@pytest.mark.timeout(180)
def test_two_worker_ddp_training_lowers_loss_and_checkpoint_loads_weights_only(two_worker_run):
    result, out_dir = two_worker_run
    assert result.metrics["iter"] == 30 and result.metrics["world_size"] == 2
    ckpt = checkpoint_in(out_dir)  # torch.load(weights_only=True): no pickled objects in it
    assert ckpt["iter_num"] == 30
    assert result.metrics["val_loss"] < 3.0 < 4.1  # starts at ln(65) ~ 4.17
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    ray_ckpt = torch.load(os.path.join(result.checkpoint.path, CKPT_NAME), weights_only=True)
    for key, value in ckpt["model"].items():  # out_dir/ckpt.pt is the run's latest Ray checkpoint
        assert torch.equal(value, ray_ckpt["model"][key])
    assert len(ckpt["resume"]["torch_rng"]) == 2  # every rank's RNG state
    assert_nanogpt_reads(ckpt)  # nanoGPT's sample.py and train.py --init_from=resume read it
    # written once: Ray's copy in local storage and out_dir/ckpt.pt are the same file (hard link + rename)
    assert os.stat(out_dir / CKPT_NAME).st_ino == os.stat(os.path.join(result.checkpoint.path, CKPT_NAME)).st_ino
    assert not [p for p in os.listdir(out_dir) if p.endswith(".partial")]  # no temporary left behind


@pytest.mark.timeout(60)
def test_wandb_offline_files_hold_logged_metrics(two_worker_run):
    result, out_dir = two_worker_run
    ckpt = checkpoint_in(out_dir)
    run_id = ckpt["resume"]["wandb_run_id"]
    runs = [d for d in (out_dir / "wandb").iterdir() if d.name.startswith("offline-run-") and d.name.endswith(run_id)]
    assert len(runs) == 1, "rank 0 only: exactly one offline run"
    data = (runs[0] / f"run-{run_id}.wandb").read_bytes()
    assert b"val/loss" in data and b"train/step_loss" in data and b"tokens_per_s" in data
    # the run was finished (wandb.finish on rank 0), not left open for wandb to guess about at exit
    assert f"finishing run nanogpt-test/{run_id}" in (runs[0] / "logs" / "debug.log").read_text()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_two_workers_match_one_worker_with_accumulation(ray_start_2_cpus, data_root, tmp_path, grad_clip):
    # global accumulation 2: split 1 + 1 over two Ray workers, or 2 micro-steps on one worker (run bare). Five
    # steps, with and without clipping: a gradient-scale bug (a sum over ranks, a missing division by the
    # micro-steps) hides behind AdamW's first step and uniform clipping, but not behind five steps unclipped
    common = dict(gradient_accumulation_steps=2, max_iters=5, eval_interval=5, eval_iters=1, warmup_iters=0,
                  grad_clip=grad_clip)
    train(_cfg(data_root, tmp_path / "two", num_workers=2, **common))
    run_bare(_cfg(data_root, tmp_path / "one", num_workers=1, **common))
    two, one = checkpoint_in(tmp_path / "two"), checkpoint_in(tmp_path / "one")
    assert two["iter_num"] == one["iter_num"] == 5
    init = _weights_at_init(data_root, tmp_path)
    moved = max((one["model"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-3  # the steps really changed the weights
    for key, value in one["model"].items():
        assert (value - two["model"][key]).abs().max().item() <= 1e-6, key
    for pid, state in one["optimizer"]["state"].items():  # the same gradients went into AdamW's moments
        assert (state["exp_avg_sq"] - two["optimizer"]["state"][pid]["exp_avg_sq"]).abs().max().item() <= 1e-9


def _weights_at_init(data_root, tmp_path):
    from nanogpt_ray.model import GPT, GPTConfig

    torch.manual_seed(1337)
    cfg = _cfg(data_root, tmp_path / "init")
    return GPT(GPTConfig(**cfg.model_args(), vocab_size=65)).state_dict()


# ---------------------------------------------------------------------------- exact resume and NaN rollback

# dropout > 0: a resume, a rollback or a restart must restore every rank's dropout RNG too, or the weights drift apart
RESUME = dict(num_workers=2, gradient_accumulation_steps=2, eval_interval=5, log_interval=5, dropout=0.1)


@pytest.fixture(scope="module")
def uninterrupted_run(ray_start_2_cpus, data_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("full") / "out"
    result = train(_cfg(data_root, out_dir, max_iters=20, **RESUME))
    return result, checkpoint_in(out_dir)


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return uninterrupted_run[1]


@pytest.mark.timeout(180)
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(uninterrupted, data_root, tmp_path):
    out_dir = tmp_path / "out"
    train(_cfg(data_root, out_dir, max_iters=10, **RESUME))
    assert checkpoint_in(out_dir)["iter_num"] == 10
    result = train(_cfg(data_root, out_dir, max_iters=20, init_from="resume", **RESUME))
    assert result.metrics["resumed_from"] == 10
    assert_same_training_state(checkpoint_in(out_dir), uninterrupted)


@pytest.mark.timeout(180)
def test_nan_loss_rolls_back_to_the_last_checkpoint_and_replays(uninterrupted, data_root, tmp_path):
    nan_at_12 = nan_runtime(RayRuntime, 12)  # rank 0's loss is NaN the first time iteration 12 runs
    # nan_skip_batches=False replays the same batches: the run must then equal the uninterrupted one
    result = train(_cfg(data_root, tmp_path / "out", max_iters=20, nan_skip_batches=False, **RESUME), nan_at_12)
    assert result.metrics["nan_rollbacks"] == 1
    # rolled back to iteration 10 with its RNG streams, so the replay is the uninterrupted run exactly
    assert_same_training_state(checkpoint_in(tmp_path / "out"), uninterrupted)


@pytest.mark.timeout(120)
def test_nan_loss_that_persists_fails_at_once_naming_the_iteration(ray_start_2_cpus, data_root, tmp_path):
    import ray.train

    nan_at_3 = nan_runtime(RayRuntime, 3, times=5)
    # max_failures=3: a diverged run fails the same way every time, so it must not use Ray's restart budget
    with pytest.raises(LaunchError, match=r"loss is nan at iteration 3; rolled back 1 times") as caught:
        train(_cfg(data_root, tmp_path / "out", max_iters=6, eval_interval=2, max_nan_rollbacks=1, max_failures=3), nan_at_3)
    # stopped by the controller at the first worker error; a retried run ends in WorkerGroupError instead
    assert isinstance(caught.value.__cause__, ray.train.ControllerError)
    assert not isinstance(caught.value.__cause__, ray.train.WorkerGroupError)


@pytest.mark.timeout(120)
def test_a_corrupt_checkpoint_found_by_the_workers_is_not_retried(ray_start_2_cpus, data_root, tmp_path):
    import ray.train

    # the driver only sees that out_dir/ckpt.pt exists; the workers find it unreadable. That fails the same way
    # on every try, so one line and no restarts, whatever max_failures allows
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / CKPT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(LaunchError, match=r"ckpt.pt is not a checkpoint that loads with weights_only=True") as caught:
        train(_cfg(data_root, tmp_path / "out", max_iters=4, init_from="resume", max_failures=3))
    assert len(str(caught.value).splitlines()) == 1
    assert isinstance(caught.value.__cause__, ray.train.ControllerError)


# ---------------------------------------------------------------------------- fault tolerance

def paused_runtime(base: type, at: int, marker: str) -> type:
    """A subclass of the runtime class `base` whose rank 1, the first time any process of the run reaches iteration
    `at` (no `marker` file yet), writes `marker` and waits there to be killed. Built in a function so Ray pickles the
    class by value to its workers."""

    class PauseAt(base):
        def on_loss(self, loss, iter_num, micro_step, X):
            if self.rank == 1 and iter_num == at and not os.path.exists(marker):
                open(marker, "w").close()
                time.sleep(120)
            return loss

    PauseAt.__name__ = PauseAt.__qualname__ = f"PauseAt{at}{base.__name__}"
    return PauseAt


@pytest.mark.timeout(300)
def test_a_run_whose_worker_is_killed_ends_bit_identical_to_an_uninterrupted_one(uninterrupted_run, ray_start_2_cpus,
                                                                                  data_root, tmp_path):
    from ray.util.state import list_actors

    full, uninterrupted = uninterrupted_run
    assert full.metrics["resumed_from"] == 0
    out_dir, marker = tmp_path / "out", tmp_path / "paused"
    # a worker held at iteration 12 (the checkpoint at 10 committed, none after it) is killed there: where the run
    # resumes no longer depends on when the kill lands
    cfg = _cfg(data_root, out_dir, max_iters=20, max_failures=2, **RESUME)
    outcome = {}

    def run():
        try:
            outcome["result"] = train(cfg, paused_runtime(RayRuntime, 12, str(marker)))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    # out_dir/ckpt.pt is written once Ray has committed a checkpoint
    while not (marker.exists() and (out_dir / CKPT_NAME).exists() and checkpoint_in(out_dir)["iter_num"] == 10):
        assert time.time() < deadline and thread.is_alive(), outcome
        time.sleep(0.05)
    # this cluster's address: other Ray clusters may run on the same machine
    address = ray_start_2_cpus.address_info["gcs_address"]
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                          detail=True)
    assert len(workers) == 2
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in outcome, outcome
    result = outcome["result"]
    assert result.metrics["iter"] == 20
    assert result.metrics["resumed_from"] == 10  # the new worker group started from the last committed checkpoint
    assert_same_training_state(checkpoint_in(out_dir), uninterrupted)


# ---------------------------------------------------------------------------- bad input: one line, exit 2

def _train_cli(capsys, data_root, out_dir, *flags) -> str:
    cfg = tiny_config(data_root, out_dir)
    argv = ["train", *(f"--{k}={v}" for k, v in cfg.items() if k not in ("resources_per_worker",)), *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.mark.timeout(60)
def test_use_gpu_without_gpus_in_the_cluster_is_one_line(ray_start_2_cpus, capsys, data_root, tmp_path):
    err = _train_cli(capsys, data_root, tmp_path / "out", "--use_gpu=True")
    assert "use_gpu=True but the Ray cluster has no GPUs" in err


@pytest.mark.timeout(60)
def test_more_workers_than_the_cluster_can_hold_fails_instead_of_waiting(ray_start_2_cpus, capsys, data_root, tmp_path):
    err = _train_cli(capsys, data_root, tmp_path / "out", "--num_workers=3", "--gradient_accumulation_steps=3")
    assert "num_workers=3 but the Ray cluster (1 node(s)) can hold at most 2 worker(s)" in err


@pytest.mark.timeout(180)
def test_cpu_workers_train_on_the_cpus_they_are_given(ray_start_2_cpus, two_worker_run, data_root, tmp_path):
    # 2 workers on 2 CPUs: one thread each; 1 worker: the whole machine (as a plain `python train.py` would)
    two_workers, _ = two_worker_run
    assert two_workers.metrics["cpu_threads"] == 1
    one_worker = train(_cfg(data_root, tmp_path / "one", num_workers=1, max_iters=4, eval_interval=2))
    assert one_worker.metrics["cpu_threads"] == 2 and one_worker.metrics["world_size"] == 1
    # an explicit cpus_per_worker wins: test_sweep_resume.py's best-config run (1 worker, cpus_per_worker=1, on 2
    # CPUs) asserts its one thread, a run of its own here cost ~10 s


# ---------------------------------------------------------------------------- bench --scaling=True

@pytest.mark.timeout(400)
def test_scaling_with_1_and_2_workers_returns_two_rows_with_tokens_per_s(ray_start_2_cpus, tmp_path, capsys):
    out = tmp_path / "scaling.json"
    settings = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, real_data=False, compile=False,
                    device="cpu", warmup_steps=1, timed_steps=3, scaling=True, max_workers=2,
                    gradient_accumulation_steps=2, json=str(out))
    assert cli.cmd_bench([f"--{key}={value}" for key, value in settings.items()]) == 0
    rows = json.loads(out.read_text())
    assert [row["workers"] for row in rows] == [1, 2]
    for row in rows:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] <= 1
        assert row["tokens_per_iter"] == 2 * 4 * 32  # the same global batch whatever the worker count
        assert row["tokens_per_s"] == pytest.approx(row["tokens_per_iter"] / (row["ms_per_iter"] / 1000), rel=1e-6)
    assert rows[0]["scaling_efficiency"] == pytest.approx(1.0)
    assert rows[1]["scaling_efficiency"] == pytest.approx(rows[1]["tokens_per_s"] / (2 * rows[0]["tokens_per_s"]))
    printed = capsys.readouterr().out
    assert "efficiency" in printed and f"{rows[1]['tokens_per_s']:,.0f}" in printed
