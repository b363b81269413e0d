"""A training process killed with SIGKILL in the middle of a real checkpoint save: the last good checkpoint
survives, the next start removes what the dead writer left, and the run resumes from that checkpoint."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanogpt_ray.checkpoint import CKPT_NAME, load_checkpoint
from nanogpt_ray.files import remove_stale_partials, temp_name_beside
from tests.train_data import make_dataset, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]
# a model whose checkpoint (weights + AdamW moments) is ~25 MB, so a save takes long enough to be caught in
FLAGS = dict(n_layer=2, n_head=4, n_embd=512, max_iters=10_000, eval_interval=1, eval_iters=1, log_interval=1,
             always_save_checkpoint=True, gradient_accumulation_steps=1, batch_size=2, block_size=16)


def start_training(data_root, out_dir, **overrides):
    flags = [f"--{k}={v}" for k, v in tiny_config(data_root, out_dir, **{**FLAGS, **overrides}).items()]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "nanogpt_ray.train_loop", *flags], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def partials(out_dir):
    return [p for p in os.listdir(out_dir) if p.endswith(".partial")] if out_dir.exists() else []


def kill_mid_save(proc, out_dir, saves_before: int, timeout_s: float = 120.0) -> None:
    """SIGKILL the writer while a save's temporary checkpoint is on disk, after `saves_before` complete saves."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        done = (out_dir / CKPT_NAME).exists() and load_checkpoint(str(out_dir))["iter_num"] >= saves_before
        if done and partials(out_dir):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("never caught the writer mid-save")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("saves_before", [1, 3])
def test_a_kill_mid_save_keeps_the_last_checkpoint_and_the_next_start_cleans_up(tmp_path, saves_before):
    make_dataset(tmp_path / "data")
    out_dir = tmp_path / "out"
    proc = start_training(tmp_path / "data", out_dir)
    kill_mid_save(proc, out_dir, saves_before)
    assert partials(out_dir)  # the dead writer's temporary folder is still there
    survivor = load_checkpoint(str(out_dir))  # loads (weights_only), so it is whole
    assert survivor["iter_num"] >= saves_before
    # the next start removes the leftovers and resumes from the surviving checkpoint
    resumed = start_training(tmp_path / "data", out_dir, init_from="resume", max_iters=survivor["iter_num"] + 2)
    assert resumed.wait(timeout=200) == 0, resumed.stderr.read().decode()[-2000:]
    assert partials(out_dir) == []
    final = torch.load(out_dir / CKPT_NAME, weights_only=True)
    assert final["iter_num"] == survivor["iter_num"] + 2


def test_stale_partials_of_dead_writers_go_and_a_live_writers_stay(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    mine = temp_name_beside(str(tmp_path / CKPT_NAME))  # tagged with this (live) process
    pathlib.Path(mine).write_bytes(b"in progress")
    theirs = pathlib.Path(mine.replace(f"-{os.getpid()}.", f"-{dead_pid}."))
    theirs.mkdir()  # a dead writer's temporary checkpoint folder
    (theirs / CKPT_NAME).write_bytes(b"half")
    (tmp_path / "notes.partial").write_bytes(b"not ours: no leading dot")
    assert remove_stale_partials(str(tmp_path)) == [str(theirs)]
    assert pathlib.Path(mine).exists() and (tmp_path / "notes.partial").exists() and not theirs.exists()
