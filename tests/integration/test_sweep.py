"""Ray Tune sweeps on a real 2-CPU Ray cluster: the scaling-law mode and a trial too big for the cluster. ASHA, the
results, the best config and resuming a killed sweep: test_sweep_resume.py (one sweep serves them all)."""

import math
import os

import pytest

from nanogpt_ray.cluster.tune import run_sweep
from nanogpt_ray.config import SweepConfig
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
