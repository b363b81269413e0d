"""A sweep whose driver (and the local Ray it started) is killed after some trials finished, then resumed.

Its own module, so that it runs after test_sweep.py has shut its Ray cluster down: with two Ray instances on
one machine, Ray Train's placement-group cleaner (which finds the cluster through the State API's address
auto-detection) fails with "Found multiple active Ray instances", the placement groups of finished trials
leak, and the resumed sweep waits forever for CPUs.
"""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

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


@pytest.mark.timeout(900)
def test_interrupted_asha_sweep_resumes_unfinished_trials_from_their_checkpoints(data_root, tmp_path):
    storage = tmp_path / "sweeps"
    sweep_dir = str(storage / "killed")
    overrides = dict(TRAIN, data_root=data_root, max_iters=100, lr_decay_iters=100)
    args = [f"--train_overrides={overrides!r}", "--learning_rates=[1e-3, 2e-3, 3e-3, 4e-3]", "--model_sizes=tiny",
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
    assert 1 <= len(finished) < 4, statuses
    before = result_files(sweep_dir)

    resumed = sweep_cli([*args, "--resume=True"], log_path)
    assert resumed.wait(timeout=600) == 0, log_path.read_text()[-3000:]

    after = result_files(sweep_dir)
    for trial in finished:
        assert after[trial] == before[trial], f"finished trial {trial} ran again"
    for trial, iteration in midway.items():
        # it continued from its own checkpoint (that one or a later one), not from iteration 0
        assert resumed_from(after[trial]) >= iteration, (trial, iteration, after[trial][-2000:])
    with open(os.path.join(sweep_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    summary = [(r["trial"], r["status"], r["iters_run"], r["error"]) for r in rows]
    assert all(r["status"] == "done" and 50 <= int(r["iters_run"]) <= 100 for r in rows), \
        f"{summary}\n{log_path.read_text()[-6000:]}"
    assert any(int(r["iters_run"]) == 100 for r in rows)  # ASHA let the best ones finish
    assert "resuming sweep" in log_path.read_text()
