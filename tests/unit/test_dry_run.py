"""--dry_run=True refuses what the run would refuse, in one line, and its plan's figures are the run's (the docs'
commands run as dry runs in test_docs_commands.py; this holds what a dry run must catch)."""

from __future__ import annotations

import os
import socket

import numpy as np
import ray
import torch

from nanogpt_ray.cli import main
from nanogpt_ray.config import TrainConfig, load_config
from nanogpt_ray.plan import DONE, this_machine_nodes
from tests.unit.test_docs_commands import CKPT_DIR, s3_my_bucket, workspace  # noqa: F401 (fixtures)

CPU_CONFIG = "configs/train_shakespeare_char_cpu.py"


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert not ray.is_initialized(), "a dry run started Ray"
    return code, out, err


def test_the_plan_states_the_runs_own_figures(workspace, capsys):
    overrides = ["--batch_size=5", "--out_dir=fresh-run"]
    code, out, _ = run(["train", CPU_CONFIG, *overrides, "--dry_run=True"], capsys)
    assert code == 0 and out.rstrip().endswith(DONE)
    cfg = load_config(TrainConfig, [CPU_CONFIG], overrides)
    assert f"= {cfg.tokens_per_iter():,} tokens per iteration" in out
    train_tokens = len(np.memmap("data/shakespeare_char/train.bin", dtype=np.uint16, mode="r"))
    assert f"{train_tokens:,} train" in out
    cpus = this_machine_nodes()[0]["Resources"]["CPU"]
    assert f"{cfg.num_workers} x (" in out and f"{cpus:g} CPUs" in out  # the workers, on the cluster it would start
    assert not os.path.exists(cfg.out_dir), "a dry run wrote the run's out_dir"


def test_workers_the_cluster_could_never_place_fail_in_one_line(workspace, capsys):
    cpus = int(this_machine_nodes()[0]["Resources"]["CPU"])
    code, out, err = run(["train", CPU_CONFIG, f"--num_workers={cpus + 1}", f"--gradient_accumulation_steps={cpus + 1}",
                          "--cpus_per_worker=1", "--dry_run=True"], capsys)
    assert code == 2 and DONE not in out
    assert err.count("\n") == 1 and f"num_workers={cpus + 1}" in err and f"can hold at most {cpus}" in err


def test_a_gpu_asked_for_is_checked_as_the_run_would(workspace, capsys):
    code, out, err = run(["train", CPU_CONFIG, "--num_workers=1", "--device=cuda", "--dry_run=True"], capsys)
    if torch.cuda.is_available():
        assert code == 0 and "device:      cuda" in out
    else:
        assert code == 2 and err.count("\n") == 1 and "device='cuda' but this machine has no CUDA GPU" in err


def test_a_resume_with_nothing_to_resume_fails(workspace, capsys):
    code, _, err = run(["train", CPU_CONFIG, "--init_from=resume", "--out_dir=nothing-here", "--dry_run=True"], capsys)
    assert code == 2 and "no checkpoint" in err


def test_a_sweep_that_exists_needs_resume(workspace, capsys):
    sweep_dir = workspace / "sweeps" / "already"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "tuner.pkl").write_bytes(b"")
    code, out, err = run(["tune", "configs/sweep_shakespeare_char_cpu.py", "--sweep_name=already", "--dry_run=True"], capsys)
    assert code == 2 and "already exists; pass --resume=True" in err
    code, out, _ = run(["tune", "configs/sweep_shakespeare_char_cpu.py", "--sweep_name=already", "--resume=True",
                        "--dry_run=True"], capsys)
    assert code == 0 and "4 trials" in out and "resumed" in out


def test_serve_on_a_busy_port_fails_before_anything_starts(workspace, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, out, err = run(["serve", f"--out_dir={CKPT_DIR}", f"--port={port}", "--dry_run=True"], capsys)
    assert code == 2 and f"port {port} on 127.0.0.1 is busy" in err and DONE not in out


def test_sample_dry_runs_check_the_prompts_and_the_output(workspace, capsys):
    code, _, err = run(["sample", f"--out_dir={CKPT_DIR}", "--prompts=prompts.jsonl", "--dry_run=True"], capsys)
    assert code == 2 and "--prompts needs --output" in err
    (workspace / "empty.jsonl").write_text("")
    code, _, err = run(["sample", f"--out_dir={CKPT_DIR}", "--prompts=empty.jsonl", "--output=o.jsonl", "--dry_run=True"],
                       capsys)
    assert code == 2 and "holds no prompts" in err
    code, out, _ = run(["sample", f"--out_dir={CKPT_DIR}", "--prompts=prompts.jsonl", "--output=o.jsonl", "--num_samples=3",
                        "--dry_run=True"], capsys)
    assert code == 0 and "2 prompts (6 rows" in out  # 3 samples of each
    code, _, err = run(["sample", f"--out_dir={CKPT_DIR}", "--start=FILE:missing.txt", "--dry_run=True"], capsys)
    assert code == 2 and "missing.txt" in err
    assert not (workspace / "o.jsonl").exists()
