"""Ray Tune sweeps on a real 2-CPU Ray cluster: ASHA, results, best config, and resuming a killed sweep."""

import csv
import glob
import json
import math
import os
import time

import pytest

from nanogpt_ray.cluster.tune import run_sweep
from nanogpt_ray.config import SweepConfig, TrainConfig, load_config
from nanogpt_ray.sweep import SweepError
from tests.sweep_data import TRAIN, write_dataset

pytestmark = pytest.mark.ray

@pytest.fixture(scope="module")
def ray_start_2_cpus():
    """A fresh local 2-CPU Ray cluster with the dashboard on (stopped trials leak placement groups without it).

    address="local": a plain ray.init() joins whatever cluster `ray start` last left in /tmp/ray, which
    other tests on this machine may be running.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    context = ray.init(address="local", num_cpus=2, include_dashboard=True,
                       runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
                                                    # a loaded shared machine can take over a minute to start a worker
                                                    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}})
    yield context
    ray.shutdown()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("sweep_data"))


@pytest.fixture(scope="module")
def asha_sweep(ray_start_2_cpus, data_root, tmp_path_factory):
    """One 4-trial ASHA sweep of the tiny model, shared by the tests below (good learning rates start first)."""
    storage = str(tmp_path_factory.mktemp("sweeps"))
    sweep = SweepConfig(train_overrides=dict(TRAIN, data_root=data_root), learning_rates=[3e-3, 1e-2, 1e-5, 3e-6],
                        model_sizes=["tiny"], scheduler="asha", grace_period=20, reduction_factor=2,
                        workers_per_trial=1, cpus_per_worker=0.99, storage_path=storage, sweep_name="asha")
    start = time.time()
    report = run_sweep(sweep)
    report.elapsed = time.time() - start
    return report


def trial_val_losses(sweep_dir: str) -> dict[str, list[float]]:
    """Every val_loss each trial reported, read straight from Tune's per-trial result.json files."""
    out = {}
    for path in glob.glob(os.path.join(sweep_dir, "train_driver_fn_*", "result.json")):
        with open(path) as f:
            results = [json.loads(line) for line in f if line.strip()]
        out[results[0]["trial_id"]] = [r["val_loss"] for r in results if "val_loss" in r]
    return out


@pytest.mark.timeout(600)
def test_four_trial_sweep_completes_on_two_cpus(asha_sweep):
    rows = asha_sweep.rows
    assert len(rows) == 4
    assert all(r["status"] == "done" for r in rows), rows
    with open(asha_sweep.results_csv) as f:
        saved = list(csv.DictReader(f))
    assert [r["trial"] for r in saved] == [r["trial"] for r in rows]
    losses = [float(r["best_val_loss"]) for r in saved]
    assert losses == sorted(losses)
    for plot in asha_sweep.plots:
        assert plot.endswith(".png") and os.path.getsize(plot) > 1000
    assert glob.glob(os.path.join(asha_sweep.sweep_dir, "tensorboard", "*", "events.out.tfevents.*"))


@pytest.mark.timeout(600)
def test_asha_stops_at_least_one_trial_early(asha_sweep):
    early = [r for r in asha_sweep.rows if r["stopped_early"]]
    assert early, asha_sweep.rows
    assert all(r["iters_run"] < TRAIN["max_iters"] for r in early)
    assert any(r["iters_run"] == TRAIN["max_iters"] for r in asha_sweep.rows)  # the best ran to the end
    assert sum(r["iters_run"] for r in asha_sweep.rows) < 4 * TRAIN["max_iters"]


@pytest.mark.timeout(600)
def test_reported_best_trial_has_lowest_val_loss(asha_sweep):
    reported = trial_val_losses(asha_sweep.sweep_dir)
    assert len(reported) == 4
    lowest = min(min(v) for v in reported.values())
    best = asha_sweep.rows[0]
    assert min(reported[best["trial"]]) == pytest.approx(lowest)
    assert best["best_val_loss"] == pytest.approx(lowest)
    assert best["learning_rate"] in (3e-3, 1e-2)  # a tiny lr cannot win in 60 iterations
    assert os.path.isdir(asha_sweep.best_checkpoint)


@pytest.mark.timeout(600)
def test_written_best_config_loads_and_trains(asha_sweep, tmp_path):
    from nanogpt_ray.cluster.train import launch as train

    best = asha_sweep.rows[0]
    cfg = load_config(TrainConfig, [asha_sweep.best_config_path],
                      ["--max_iters=10", f"--out_dir={tmp_path / 'out'}", "--num_workers=1", "--cpus_per_worker=1"])
    assert cfg.learning_rate == best["learning_rate"]
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (2, 2, 64)
    result = train(cfg)
    assert result.metrics["iter"] == 10
    assert math.isfinite(result.metrics["val_loss"])
    assert os.path.exists(tmp_path / "out" / "ckpt.pt")


@pytest.mark.timeout(600)
def test_scaling_law_mode_trains_every_size_on_the_token_budget_and_fits(ray_start_2_cpus, data_root, tmp_path, capsys):
    tokens_per_iter = TRAIN["batch_size"] * TRAIN["block_size"]  # accumulation 1, one worker
    sweep = SweepConfig(train_overrides=dict(TRAIN, data_root=data_root), learning_rates=[3e-3],
                        model_sizes=["tiny", "mini", "small"], scaling_law=True, token_budget=25 * tokens_per_iter,
                        workers_per_trial=1, cpus_per_worker=0.99, storage_path=str(tmp_path), sweep_name="scaling")
    report = run_sweep(sweep)
    assert sorted(r["model_size"] for r in report.rows) == ["mini", "small", "tiny"]
    assert all(r["status"] == "done" and r["iters_run"] == 25 and not r["stopped_early"] for r in report.rows), report.rows
    a, alpha, c = report.scaling_fit
    assert all(math.isfinite(v) for v in (a, alpha, c)) and alpha > 0
    assert [r["params"] for r in sorted(report.rows, key=lambda r: r["params"])] == \
        [r["params"] for r in sorted(report.rows, key=lambda r: ["tiny", "mini", "small"].index(r["model_size"]))]
    out = capsys.readouterr().out
    assert "scaling law: L(N) = " in out and "ASHA is off" in out
    assert os.path.getsize(os.path.join(report.sweep_dir, "plots", "scaling_law.png")) > 1000


@pytest.mark.timeout(120)
def test_more_workers_per_trial_than_the_cluster_holds_fails_before_starting(ray_start_2_cpus, data_root, tmp_path):
    sweep = SweepConfig(train_overrides=dict(TRAIN, data_root=data_root, gradient_accumulation_steps=3),
                        learning_rates=[1e-3], workers_per_trial=3, cpus_per_worker=1.0, storage_path=str(tmp_path),
                        sweep_name="big")
    with pytest.raises(SweepError, match="a trial needs 3.01 CPUs") as e:
        run_sweep(sweep)
    assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "big")
