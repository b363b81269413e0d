"""Many things at once on one machine, as a person does them: another Ray instance (`ray start --head` on its own
ports and temp dir) runs throughout; beside it `serve` and a 2-worker `train` run at the same time, each on a
cluster of its own; a busy port and a second `serve` on the same port are refused in one line; batch sampling
joins the other instance and names it; a 4-trial sweep with one trial that cannot be placed ends with that
trial failed and the rest finished. Every command is the real CLI in its own process, and none prints a
traceback.

The other instance is stopped by its own handle (the process group of `ray start --block`, then any process
still naming its temp dir), never with `ray stop`.
"""

import csv
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from nanogpt_ray.checkpoint import save_checkpoint
from nanogpt_ray.model import GPT, GPTConfig
from tests.integration.test_job_submit import _free_ports, _pids_naming
from tests.sweep_data import TRAIN, write_dataset
from tests.train_data import VOCAB, make_dataset, tiny_config

pytestmark = pytest.mark.ray
REPO = pathlib.Path(__file__).resolve().parents[2]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nanogpt_ray.cli", *args]


def flags(values: dict) -> list[str]:
    return [f"--{k}={v!r}" if isinstance(v, (dict, list)) else f"--{k}={v}" for k, v in values.items()]


def assert_clean(proc_or_output, what: str) -> str:
    output = proc_or_output if isinstance(proc_or_output, str) else proc_or_output.stdout + proc_or_output.stderr
    assert "Traceback" not in output and "Found multiple active Ray instances" not in output, f"{what}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def other_ray(tmp_path_factory):
    """Another Ray instance on this machine, as a colleague's `ray start --head` would be: (address, env) where
    env starts each of our commands on a cluster of its own (RAY_ADDRESS=local)."""
    import tempfile

    port, client, node_mgr, obj_mgr, agent_listen, agent_grpc, metrics, rt_agent, min_w = _free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="rayother-", dir="/tmp")  # short: Unix socket paths are limited
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO),
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={port}", "--include-dashboard=false", f"--ray-client-server-port={client}",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
           f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_agent}",
           f"--min-worker-port={min_w}", f"--max-worker-port={min_w + 200}", "--num-cpus=2", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                assert time.time() < deadline, "the other Ray instance did not come up in 120 s"
                time.sleep(0.5)
        yield address, dict(env, RAY_ADDRESS="local")
    finally:  # a test cluster holds nothing worth a graceful stop (which takes ~30 s here)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=30)
        for pid in _pids_naming(temp_dir):  # anything of that instance outside the head's process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    make_dataset(root / "data")
    torch.manual_seed(0)
    model_args = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=VOCAB, dropout=0.0)
    (root / "serve_out").mkdir()
    save_checkpoint({"model": GPT(GPTConfig(**model_args)).state_dict(), "optimizer": {}, "model_args": model_args,
                     "iter_num": 0, "best_val_loss": 1e9, "config": {"dataset": "tiny", "data_root": str(root / "data")}},
                    str(root / "serve_out" / "ckpt.pt"))
    return root


@pytest.mark.timeout(420)
def test_serve_and_train_at_once_beside_another_ray_then_sampling_joins_it(other_ray, data):
    address, env = other_ray
    port = _free_ports(1)[0]
    serve_args = [f"--out_dir={data / 'serve_out'}", f"--data_root={data / 'data'}", "--device=cpu", "--dtype=float32",
                  "--cpus_per_replica=0.5", "--model_name=tiny"]
    # a plain socket holds the port: one line naming it and --port, exit 2, before any Ray starts
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        busy = subprocess.run(cli("serve", *serve_args, f"--port={port}"), env=env, capture_output=True, text=True,
                              timeout=120)
    assert busy.returncode == 2 and len(busy.stderr.strip().splitlines()) == 1, busy.stderr
    assert f"port {port}" in busy.stderr and f"pid {os.getpid()}" in busy.stderr and "--port" in busy.stderr

    server = subprocess.Popen(cli("serve", *serve_args, f"--port={port}"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        train_cfg = tiny_config(data / "data", data / "train_out", num_workers=2, max_iters=10)
        train = subprocess.run(cli("train", *flags(train_cfg)), env=env, capture_output=True, text=True, timeout=300)
        assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
        assert_clean(train, "train beside serve and another Ray")
        assert torch.load(data / "train_out" / "ckpt.pt", weights_only=True)["iter_num"] == 10

        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.time() < deadline, "serve did not come up"
            time.sleep(1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                       json={"model": "tiny", "prompt": "ABC", "max_tokens": 5, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5

        second = subprocess.run(cli("serve", *serve_args, f"--port={port}"), env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"port {port} on 127.0.0.1 is busy" in second.stderr
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            serve_output = server.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            serve_output = server.communicate()[0]
    assert f"at http://127.0.0.1:{port}/v1" in serve_output
    assert_clean(serve_output, "serve beside train and another Ray")

    # batch sampling joins the other instance by its address, and says which cluster it joined
    (data / "prompts.txt").write_text("ABC\nDEF\n")
    sample = subprocess.run(cli("sample", f"--out_dir={data / 'train_out'}", f"--data_root={data / 'data'}",
                                f"--prompts={data / 'prompts.txt'}", f"--output={data / 'samples.jsonl'}",
                                "--max_new_tokens=8", "--num_samples=1", "--num_actors=1", "--device=cpu",
                                "--dtype=float32", f"--address={address}"),
                            env=env, capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0, sample.stdout[-2000:] + sample.stderr[-3000:]
    output = assert_clean(sample, "batch sampling on the other Ray")
    port_of_other = address.rsplit(":", 1)[1]  # Ray names loopback by the machine's IP
    assert re.search(rf"^joined the Ray cluster at \S+:{port_of_other}$", output, re.M), output[-2000:]
    rows = [json.loads(line) for line in (data / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [1, 2] and all(r["tokens"] == 8 for r in rows)


@pytest.mark.timeout(420)
def test_a_sweep_beside_another_ray_ends_with_the_unplaceable_trial_failed_and_the_rest_done(other_ray, tmp_path):
    _, env = other_ray
    data_root = write_dataset(tmp_path)
    # three trials fit; the fourth asks for a resource no node has, so its workers can never be placed
    sweep = dict(train_overrides=dict(TRAIN, data_root=data_root, max_iters=20, lr_decay_iters=20),
                 learning_rates=[3e-3], model_sizes=["tiny"], search_space={"resources_per_worker": [{}, {}, {}, {"no_such_node": 1}]},
                 scheduler="none", workers_per_trial=1, cpus_per_worker=0.99, storage_path=str(tmp_path / "sweeps"),
                 sweep_name="many")
    tune = subprocess.run(cli("tune", *flags(sweep)), env=dict(env, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="10"),
                          capture_output=True, text=True, timeout=400)
    assert tune.returncode == 0, tune.stdout[-3000:] + tune.stderr[-3000:]
    with open(tmp_path / "sweeps" / "many" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["status"] for r in rows) == ["done", "done", "done", "error"], rows
    [failed] = [r for r in rows if r["status"] == "error"]
    assert "could not be placed within 10 s, 2 tries" in failed["error"] and "no_such_node: 1" in failed["error"]
    assert all(int(r["iters_run"]) == 20 for r in rows if r["status"] == "done")
    assert_clean(tune, "a sweep beside another Ray, with a trial that cannot be placed")
