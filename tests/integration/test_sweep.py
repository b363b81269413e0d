"""Ray Tune sweeps on a real 2-CPU Ray cluster: ASHA, results, best config, and resuming a killed sweep."""

import csv
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nanogpt_ray.config import SweepConfig, TrainConfig, load_config
from nanogpt_ray.sweep import SweepError, run_sweep

pytestmark = pytest.mark.ray
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny model on a tiny dataset: trials take seconds, so the Ray overhead dominates.
TRAIN = dict(dataset="words", gradient_accumulation_steps=1, batch_size=8, block_size=16, eval_iters=2,
             eval_interval=10, log_interval=10, warmup_iters=0, max_iters=60, lr_decay_iters=60, device="cpu",
             dtype="float32", compile=False, always_save_checkpoint=True, num_checkpoints_to_keep=1, use_gpu=False)


def write_dataset(root) -> str:
    """A small char dataset: random words from a fixed list, so a good learning rate learns it fast."""
    rng = np.random.default_rng(0)
    words = ["ray ", "tune ", "train ", "gpt ", "loss ", "sweep "]
    text = "".join(rng.choice(words, size=6000))
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    folder = os.path.join(root, "words")
    os.makedirs(folder, exist_ok=True)
    split = int(0.9 * len(ids))
    ids[:split].tofile(os.path.join(folder, "train.bin"))
    ids[split:].tofile(os.path.join(folder, "val.bin"))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"tokenizer": "char", "vocab_size": len(chars), "chars": chars, "dtype": "uint16"}, f)
    return str(root)


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
    from nanogpt_ray.launch import train

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
                        learning_rates=[1e-3], workers_per_trial=3, storage_path=str(tmp_path), sweep_name="big")
    with pytest.raises(SweepError, match="a trial needs 3.01 CPUs") as e:
        run_sweep(sweep)
    assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "big")


# ----------------------------------------------------------------------------- a sweep killed and resumed

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
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not the test's
    env.update(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1", RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="300", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "jobs.tune", *args], cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.timeout(900)
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(data_root, tmp_path):
    storage = tmp_path / "sweeps"
    sweep_dir = str(storage / "killed")
    overrides = dict(TRAIN, data_root=data_root, max_iters=40, lr_decay_iters=40)
    args = [f"--train_overrides={overrides!r}", "--learning_rates=[1e-3, 2e-3, 3e-3, 4e-3]", "--model_sizes=tiny",
            "--scheduler=none", "--cpus_per_worker=0.99", f"--storage_path={storage}", "--sweep_name=killed"]
    log_path = tmp_path / "sweep.log"
    driver = sweep_cli(args, log_path)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and driver.poll() is None:
            finished = [t for t, s in trial_statuses(sweep_dir).items() if s == "TERMINATED"]
            if finished:
                break
            time.sleep(0.5)
        assert driver.poll() is None, "the sweep ended before it could be interrupted:\n" + log_path.read_text()[-3000:]
        assert finished, "no trial finished in time:\n" + log_path.read_text()[-3000:]
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
    with open(os.path.join(sweep_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    summary = [(r["trial"], r["status"], r["iters_run"], r["error"]) for r in rows]
    assert all(int(r["iters_run"]) == 40 and r["status"] == "done" for r in rows), \
        f"{summary}\n{log_path.read_text()[-6000:]}"
    assert "resuming sweep" in log_path.read_text()
