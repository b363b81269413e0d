"""A 4-trial ASHA sweep whose driver (and the local Ray it started) is killed after some trials finished, then
resumed; the finished sweep is the one the tests below read: ASHA, results, best config.

The killed sweep runs through the CLI (`python -m jobs.tune`) on a local Ray of its own; the resume runs here,
through run_sweep, on a 2-CPU Ray this module starts only once the killed one is gone, so the resumed sweep's
report is at hand. Its own module, so that it runs after test_sweep.py has shut its Ray cluster down: with two
Ray instances on one machine, Ray Train's placement-group cleaner (which finds the cluster through the State
API's address auto-detection) fails with "Found multiple active Ray instances", the placement groups of finished
trials leak, and the resumed sweep waits forever for CPUs.
"""

import contextlib
import csv
import glob
import io
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanogpt_ray.config import SweepConfig, TrainConfig, load_config
from tests.sweep_data import TRAIN, write_dataset

pytestmark = pytest.mark.ray
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("sweep_data"))


def trial_statuses(sweep_dir: str) -> dict[str, str]:
    """trial id -> status in Tune's latest experiment snapshot."""
    paths = sorted(glob.glob(os.path.join(sweep_dir, "experiment_state-*.json")))
    if not paths:
        return {}
    try:
        with open(paths[-1]) as f:
            state = json.load(f)
    except (OSError, ValueError):  # being rewritten right now
        return {}
    trials = [json.loads(entry[0]) for entry in state["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def result_files(sweep_dir: str) -> dict[str, bytes]:
    out = {}
    for path in glob.glob(os.path.join(sweep_dir, "train_driver_fn_*", "result.json")):
        with open(path, "rb") as f:
            content = f.read()
        if content:
            out[json.loads(content.splitlines()[0])["trial_id"]] = content
    return out


def kill_session(session_id: int) -> None:
    """SIGKILL every process of a session, as a crash of the machine running it would.

    Killing the process group is not enough: Ray starts each worker (trial drivers, Train controllers and
    workers) in a process group of its own, and orphaned workers may keep writing to the sweep's storage for
    a moment after their raylet died.
    """
    for _ in range(50):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == session_id and fields[0] != "Z":  # field 6 of stat: session id
                    pids.append(int(entry))
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"processes of session {session_id} survive SIGKILL: {pids}")


def sweep_cli(args, log_path):
    # RAY_ADDRESS=local: its own local Ray, never the test's nor one another program started on this machine
    env = dict(os.environ, RAY_ADDRESS="local")
    env.update(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1", RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="300", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "jobs.tune", *args], cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def checkpoint_iters(sweep_dir: str, trials) -> dict[str, int]:
    """trial id -> iteration of the checkpoint in its out_dir (what its Train run has committed), if any."""
    out = {}
    for trial in trials:
        path = os.path.join(sweep_dir, "trials", trial, "out", "ckpt.pt")
        try:
            out[trial] = int(torch.load(path, weights_only=True)["iter_num"])
        except Exception:  # not there yet, or being renamed into place right now
            continue
    return out


def resumed_from(content: bytes) -> int:
    """The iteration a trial's (last) Train run resumed from, from its result.json lines."""
    rows = [json.loads(line) for line in content.splitlines() if line.strip()]
    return max((int(r.get("resumed_from", 0)) for r in rows), default=0)


# good learning rates start first; the tiny ones lose at ASHA's rung (grace_period) and stop there
LEARNING_RATES = [3e-3, 1e-2, 1e-5, 3e-6]
MAX_ITERS = 100


@pytest.fixture(scope="module")
def resumed_sweep(data_root, tmp_path_factory):
    """The sweep, killed once a trial is done and another is part-way with a checkpoint, then resumed here.
    Returns the resumed sweep's report and what the tests need of the killed one."""
    import ray

    from nanogpt_ray.cluster.tune import run_sweep

    tmp_path = tmp_path_factory.mktemp("resume")
    storage = tmp_path / "sweeps"
    sweep_dir = str(storage / "killed")
    overrides = dict(TRAIN, data_root=data_root, max_iters=MAX_ITERS, lr_decay_iters=MAX_ITERS)
    args = [f"--train_overrides={overrides!r}", f"--learning_rates={LEARNING_RATES!r}", "--model_sizes=tiny",
            "--scheduler=asha", "--grace_period=50", "--reduction_factor=2", "--cpus_per_worker=0.99",
            f"--storage_path={storage}", "--sweep_name=killed"]
    log_path = tmp_path / "sweep.log"
    driver = sweep_cli(args, log_path)
    try:
        deadline = time.time() + 400
        midway = {}
        while time.time() < deadline and driver.poll() is None:
            statuses = trial_statuses(sweep_dir)
            finished = [t for t, s in statuses.items() if s == "TERMINATED"]
            running = [t for t, s in statuses.items() if s == "RUNNING"]
            midway = {t: it for t, it in checkpoint_iters(sweep_dir, running).items() if it >= 20}
            if finished and midway:  # kill once a trial is done and another is part-way with a checkpoint
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be interrupted:\n" + log_path.read_text()[-3000:]
        assert finished and midway, f"no finished + part-way pair in time {statuses}:\n" + log_path.read_text()[-3000:]
    finally:
        kill_session(driver.pid)  # the driver and the local Ray it started (start_new_session: sid == its pid)
        driver.wait()
    statuses = trial_statuses(sweep_dir)
    finished = sorted(t for t, s in statuses.items() if s == "TERMINATED")
    before = result_files(sweep_dir)

    # the resume, on a fresh Ray of this process's own (the killed one is gone: one Ray instance at a time)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=True,
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
                                          # a loaded shared machine can take over a minute to start a worker
                                          "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}})
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            report = run_sweep(SweepConfig(train_overrides=overrides, learning_rates=LEARNING_RATES,
                                           model_sizes=["tiny"], scheduler="asha", grace_period=50, reduction_factor=2,
                                           workers_per_trial=1, cpus_per_worker=0.99, storage_path=str(storage),
                                           sweep_name="killed", resume=True))
        yield dict(report=report, sweep_dir=sweep_dir, statuses=statuses, finished=finished, midway=midway,
                   before=before, log=log_path.read_text() + out.getvalue())
    finally:
        ray.shutdown()


@pytest.mark.timeout(900)
def test_interrupted_asha_sweep_resumes_unfinished_trials_from_their_checkpoints(resumed_sweep):
    sweep_dir, finished, log = resumed_sweep["sweep_dir"], resumed_sweep["finished"], resumed_sweep["log"]
    assert 1 <= len(finished) < 4, resumed_sweep["statuses"]
    before = resumed_sweep["before"]
    assert "resuming sweep" in log

    after = result_files(sweep_dir)
    for trial in finished:
        assert after[trial] == before[trial], f"finished trial {trial} ran again"
    for trial, iteration in resumed_sweep["midway"].items():
        # it continued from its own checkpoint (that one or a later one), not from iteration 0
        assert resumed_from(after[trial]) >= iteration, (trial, iteration, after[trial][-2000:])
    with open(os.path.join(sweep_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    summary = [(r["trial"], r["status"], r["iters_run"], r["error"]) for r in rows]
    assert all(r["status"] == "done" and 50 <= int(r["iters_run"]) <= MAX_ITERS for r in rows), \
        f"{summary}\n{log[-6000:]}"
    assert any(int(r["iters_run"]) == MAX_ITERS for r in rows)  # ASHA let the best ones finish


# ---------------------------------------------------------------------------- the resumed sweep's report


def trial_val_losses(sweep_dir: str) -> dict[str, list[float]]:
    """Every val_loss each trial reported, read straight from Tune's per-trial result.json files."""
    out = {}
    for path in glob.glob(os.path.join(sweep_dir, "train_driver_fn_*", "result.json")):
        with open(path) as f:
            results = [json.loads(line) for line in f if line.strip()]
        out[results[0]["trial_id"]] = [r["val_loss"] for r in results if "val_loss" in r]
    return out


@pytest.mark.timeout(600)
def test_four_trial_sweep_completes_on_two_cpus(resumed_sweep):
    report = resumed_sweep["report"]
    rows = report.rows
    assert len(rows) == 4
    assert all(r["status"] == "done" for r in rows), rows
    with open(report.results_csv) as f:
        saved = list(csv.DictReader(f))
    assert [r["trial"] for r in saved] == [r["trial"] for r in rows]
    losses = [float(r["best_val_loss"]) for r in saved]
    assert losses == sorted(losses)
    for plot in report.plots:
        assert plot.endswith(".png") and os.path.getsize(plot) > 1000
    assert glob.glob(os.path.join(report.sweep_dir, "tensorboard", "*", "events.out.tfevents.*"))


@pytest.mark.timeout(600)
def test_asha_stops_at_least_one_trial_early(resumed_sweep):
    rows = resumed_sweep["report"].rows
    early = [r for r in rows if r["stopped_early"]]
    assert early, rows
    assert all(r["iters_run"] < MAX_ITERS for r in early)
    assert any(r["iters_run"] == MAX_ITERS for r in rows)  # the best ran to the end
    assert sum(r["iters_run"] for r in rows) < 4 * MAX_ITERS


@pytest.mark.timeout(600)
def test_reported_best_trial_has_lowest_val_loss(resumed_sweep):
    report = resumed_sweep["report"]
    reported = trial_val_losses(report.sweep_dir)
    assert len(reported) == 4
    lowest = min(min(v) for v in reported.values())
    best = report.rows[0]
    assert min(reported[best["trial"]]) == pytest.approx(lowest)
    assert best["best_val_loss"] == pytest.approx(lowest)
    assert best["learning_rate"] in (3e-3, 1e-2)  # a tiny lr cannot win in 100 iterations
    assert os.path.isdir(report.best_checkpoint)


@pytest.mark.timeout(600)
def test_written_best_config_loads_and_trains(resumed_sweep, tmp_path):
    from nanogpt_ray.cluster.train import launch as train

    report = resumed_sweep["report"]
    best = report.rows[0]
    cfg = load_config(TrainConfig, [report.best_config_path],
                      ["--max_iters=10", f"--out_dir={tmp_path / 'out'}", "--num_workers=1", "--cpus_per_worker=1"])
    assert cfg.learning_rate == best["learning_rate"]
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (2, 2, 64)
    result = train(cfg)
    assert result.metrics["iter"] == 10
    assert result.metrics["cpu_threads"] == 1  # an explicit cpus_per_worker wins over the 2 CPUs a lone worker gets
    assert math.isfinite(result.metrics["val_loss"])
    assert os.path.exists(tmp_path / "out" / "ckpt.pt")
