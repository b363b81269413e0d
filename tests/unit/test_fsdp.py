"""FSDP2 against DDP on real gloo process groups (torch.multiprocessing, no Ray): the same losses and weights,
half the per-worker state, and nanoGPT's single-file checkpoint that resumes on any worker count and on DDP.

One module-scoped set of runs (each spawn costs ~10 s of interpreter start-up on a 2-core machine):
  ddp5      DDP, 2 workers, iterations 0..5
  fsdp5     FSDP, 2 workers, iterations 0..5               (saves at 5)
  fsdp15    FSDP, 2 workers, iterations 0..15 uninterrupted
  resumed   fsdp5's checkpoint -> 1 worker to 10 -> DDP, 2 workers to 15
  fsdp_bf16 FSDP, 2 workers, iterations 0..5 in bfloat16 (its mixed-precision policy, on gloo)
"""

import json
import os
import shutil
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanogpt_ray import cli
from nanogpt_ray.checkpoint import CKPT_NAME, model_from_checkpoint
from nanogpt_ray.config import ConfigError, TrainConfig, from_dict
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.parallel import ParallelismError, local_state_bytes, mixed_precision_policy, shard_model
from nanogpt_ray.train_loop import run_bare
from tests.nanogpt_contract import assert_nanogpt_reads
from tests.train_data import make_dataset, tiny_config

# 4 global micro-steps: 2 per worker, so gradient sync is skipped on one micro-step of each iteration;
# grad_clip low enough that every step clips (the global norm must be the one DDP sees)
RUN = dict(gradient_accumulation_steps=4, log_interval=1, eval_interval=5, eval_iters=3, grad_clip=0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: dict, history_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        runtime = run_bare(config)
        if rank == 0:
            with open(history_path, "w") as f:
                json.dump(runtime.history, f)
    finally:
        dist.destroy_process_group()
    # leave without the interpreter's teardown: a gloo thread still joinable at exit aborted a rank now and
    # then ("terminate called without an active exception") after all its work was written
    sys.stdout.flush()
    os._exit(0)


def train_on(world: int, config: dict, tmp_path) -> list[dict]:
    """Run the training loop on `world` gloo ranks (in this process for one); rank 0's reports."""
    if world == 1:
        return run_bare(config).history
    history_path = str(tmp_path / f"history-{free_port()}.json")
    mp.spawn(_worker, args=(world, free_port(), config, history_path), nprocs=world)
    with open(history_path) as f:
        return json.load(f)


def losses(history: list[dict]) -> dict[int, float]:
    return {h["iter"]: h["loss"] for h in history if "loss" in h}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    make_dataset(root / "data")

    def config(out_dir, **overrides):
        return tiny_config(root / "data", root / out_dir, **{**RUN, **overrides})

    out = {"root": root}
    out["ddp5"] = train_on(2, config("ddp5", max_iters=5, num_workers=2), root)
    out["fsdp5"] = train_on(2, config("fsdp5", max_iters=5, num_workers=2, parallelism="fsdp"), root)
    out["fsdp15"] = train_on(2, config("fsdp15", max_iters=15, num_workers=2, parallelism="fsdp"), root)
    shutil.copytree(root / "fsdp5", root / "resumed")
    one = train_on(1, config("resumed", max_iters=10, init_from="resume", parallelism="fsdp"), root)
    two = train_on(2, config("resumed", max_iters=15, init_from="resume", num_workers=2), root)
    out["resumed"] = one + two
    out["fsdp_bf16"] = train_on(2, config("fsdp_bf16", max_iters=5, num_workers=2, parallelism="fsdp",
                                          dtype="bfloat16"), root)
    return out


def weights(run_dir) -> dict:
    return torch.load(run_dir / CKPT_NAME, weights_only=True)


@pytest.mark.timeout(300)
def test_fsdp_two_workers_match_ddp_two_workers_over_5_steps(runs):
    ddp, fsdp = losses(runs["ddp5"]), losses(runs["fsdp5"])
    assert sorted(ddp) == [1, 2, 3, 4] and sorted(fsdp) == sorted(ddp)  # iteration 5 reports eval instead
    for it in ddp:
        assert abs(ddp[it] - fsdp[it]) <= 1e-5, (it, ddp[it], fsdp[it])
    a, b = weights(runs["root"] / "ddp5"), weights(runs["root"] / "fsdp5")
    assert a["iter_num"] == b["iter_num"] == 5 and a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], atol=1e-5, rtol=1e-4, msg=key)
    # the optimizer state is consolidated into torch's index-keyed format, the same as DDP's
    assert a["optimizer"]["param_groups"][0]["params"] == b["optimizer"]["param_groups"][0]["params"]
    for i, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][i]["exp_avg"], state["exp_avg"], atol=1e-6, rtol=1e-4)
    # the tied embedding is one tensor in the file, as in nanoGPT's
    assert b["model"]["lm_head.weight"].data_ptr() == b["model"]["transformer.wte.weight"].data_ptr()


@pytest.mark.timeout(300)
def test_nanogpt_reads_the_checkpoints_of_ddp_and_fsdp_over_gloo(runs):
    for run in ("ddp5", "fsdp5"):
        assert_nanogpt_reads(weights(runs["root"] / run))


@pytest.mark.timeout(300)
def test_fsdp_checkpoint_resumes_on_one_worker_then_on_ddp_like_the_uninterrupted_run(runs):
    full, resumed = losses(runs["fsdp15"]), losses(runs["resumed"])
    later = [it for it in full if it > 5]
    assert later and sorted(it for it in resumed if it > 5) == later
    for it in later:
        assert abs(full[it] - resumed[it]) <= 1e-4, (it, full[it], resumed[it])
    worlds = {h["iter"]: h["world_size"] for h in runs["resumed"] if "loss" in h}
    assert worlds[7] == 1 and worlds[12] == 2  # it really ran on one worker, then two
    a, b = weights(runs["root"] / "fsdp15"), weights(runs["root"] / "resumed")
    assert b["iter_num"] == 15 and b["config"]["parallelism"] == "ddp"
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], atol=1e-4, rtol=1e-3, msg=key)


@pytest.mark.timeout(300)
def test_fsdp_in_bfloat16_computes_in_bf16_keeps_fp32_weights_and_tracks_fp32(runs):
    bf16, fp32 = losses(runs["fsdp_bf16"]), losses(runs["fsdp5"])
    assert sorted(bf16) == sorted(fp32)
    gaps = [abs(bf16[it] - fp32[it]) for it in fp32]
    assert max(gaps) <= 0.02 and max(gaps) > 1e-5, gaps  # bf16 rounding shows, and stays small
    model = weights(runs["root"] / "fsdp_bf16")["model"]
    assert {t.dtype for t in model.values()} == {torch.float32}  # the master weights stay fp32
    policy = mixed_precision_policy("bfloat16")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert mixed_precision_policy("float32").param_dtype is None


@pytest.mark.timeout(300)
def test_sample_and_export_from_an_fsdp_run(runs, tmp_path, capsys):
    run_dir = runs["root"] / "fsdp15"
    assert cli.main(["sample", f"--out_dir={run_dir}", "--num_samples=1", "--max_new_tokens=8", "--device=cpu",
                     "--start=!", "--top_k=1"]) == 0
    assert len(capsys.readouterr().out.split("\n")[0]) == 9
    pytest.importorskip("transformers")
    from transformers import GPT2LMHeadModel

    assert cli.main(["export", f"--out_dir={run_dir}", f"--hf_dir={tmp_path / 'hf'}"]) == 0
    ours = model_from_checkpoint(weights(run_dir)).eval()
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 65, (1, 16))
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx, targets=torch.zeros_like(idx))[0]).abs().max() <= 1e-4


def _measure(rank: int, world: int, port: int, parallelism: str, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=32, vocab_size=65, bias=False))
        model = shard_model(model, parallelism, world, "cpu", "float32")
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        X = torch.randint(0, 65, (2, 32))
        model(X, X)[1].backward()
        optimizer.step()  # creates the AdamW moments
        measured = local_state_bytes(model, optimizer)
        with open(f"{out_path}.{rank}", "w") as f:
            json.dump(measured, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_fsdp_holds_about_half_of_ddps_bytes_per_worker_at_two_workers(tmp_path):
    mp.spawn(_measure, args=(2, free_port(), "fsdp", str(tmp_path / "fsdp")), nprocs=2)
    mp.spawn(_measure, args=(1, free_port(), "ddp", str(tmp_path / "ddp")), nprocs=1)  # a replica: every DDP rank's
    ddp = json.loads((tmp_path / "ddp.0").read_text())
    for rank in range(2):
        fsdp = json.loads((tmp_path / f"fsdp.{rank}").read_text())
        for kind in ("params", "grads", "optimizer"):
            assert 0.45 <= fsdp[kind] / ddp[kind] <= 0.55, (rank, kind, fsdp[kind], ddp[kind])


def test_fsdp_with_float16_is_one_line():
    with pytest.raises(ConfigError, match="does not support dtype='float16'"):
        from_dict(TrainConfig, {"parallelism": "fsdp", "dtype": "float16"})
    with pytest.raises(ParallelismError, match="--dtype=bfloat16"):  # dtype='auto' resolved to fp16 on a worker
        shard_model(torch.nn.Linear(2, 2), "fsdp", 2, "cuda:0", "float16")
    with pytest.raises(ConfigError, match="parallelism"):
        from_dict(TrainConfig, {"parallelism": "zero3"})
