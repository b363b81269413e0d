"""`ray start --head` on loopback with its own ports + `ray job submit -- python -m jobs.train ...`.

The cluster is stopped by its own handle (the process group of `ray start --block`, then any process still
naming its private temp dir), never with `ray stop`, which would stop every Ray cluster of this user.
"""

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import torch

from tests.train_data import make_dataset, tiny_config

pytestmark = pytest.mark.ray
REPO = pathlib.Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _pids_naming(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def loopback_head():
    """A head node on 127.0.0.1 with private ports and temp dir; yields (dashboard address, env)."""
    port, dash, client, node_mgr, obj_mgr, agent_listen, agent_grpc, metrics, rt_agent, min_w = _free_ports(10)
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # short: Unix socket paths are limited
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS="",
               PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS")
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--ray-client-server-port={client}", f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
           f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_agent}",
           f"--min-worker-port={min_w}", f"--max-worker-port={min_w + 200}", "--num-cpus=2", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                assert head.poll() is None, "ray start --head exited"
                assert time.time() < deadline, "the head's dashboard did not come up in 120 s"
                time.sleep(0.5)
        yield address, env
    finally:  # a test cluster holds nothing worth a graceful stop (SIGTERM waited out head.wait's 30 s here)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=30)
        for pid in _pids_naming(temp_dir):  # anything of this cluster that outlived the head (workers, agents)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(300)
def test_ray_job_submit_trains_and_leaves_a_checkpoint_in_storage(loopback_head, tmp_path):
    address, env = loopback_head
    make_dataset(tmp_path / "data")
    storage = tmp_path / "storage"
    cfg = tiny_config(tmp_path / "data", tmp_path / "out", num_workers=2, max_iters=10, storage_path=str(storage),
                      run_name="job-test")
    flags = [f"--{k}={v}" for k, v in cfg.items()]
    proc = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "ray"), "job", "submit", f"--address={address}",
         f"--working-dir={REPO}", f"--runtime-env={REPO / 'jobs' / 'runtime_env.yaml'}",
         "--", "python", "-m", "jobs.train", *flags],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=280)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]  # the blocking submit exits 1 when the job fails
    job_id = re.search(r"Job '(raysubmit_\w+)' succeeded", output).group(1)
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED
    checkpoints = sorted((storage / "job-test").glob("checkpoint_*/ckpt.pt"))
    assert checkpoints, list(storage.rglob("*"))[:20]
    assert torch.load(checkpoints[-1], weights_only=True)["iter_num"] == 10
