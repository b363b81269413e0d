"""Batch sampling on real Ray actors (CPU): keyed, exact, per-row errors, actor deaths, resume, parquet, CLI."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from nanogpt_ray.batch_sampling import expand_rows, read_results, sample_rows
from nanogpt_ray.checkpoint import load_model, save_checkpoint
from nanogpt_ray.cluster.sampling import (
    sample_dataset,
    sample_file,
    sample_prompts,
    start_sampler_actors,
    stop_actors,
)
from nanogpt_ray.cluster.session import ClusterError
from nanogpt_ray.config import SampleConfig
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.tokenizer import CharTokenizer, read_meta, tokenizer_from_meta

pytestmark = pytest.mark.ray
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak.\n"
BLOCK = 32
N = 200


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny char-level checkpoint (ckpt.pt + the dataset's meta.json), as training would leave it."""
    root = tmp_path_factory.mktemp("batch_sampling")
    data_root, out_dir = root / "data", root / "out"
    tokenizer = CharTokenizer.from_text(TEXT)
    (data_root / "tiny").mkdir(parents=True)
    (data_root / "tiny" / "meta.json").write_text(json.dumps(tokenizer.meta()))
    torch.manual_seed(0)
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, bias=True,
                      vocab_size=tokenizer.vocab_size, dropout=0.0)
    model = GPT(GPTConfig(**model_args))
    save_checkpoint({"model": model.state_dict(), "model_args": model_args, "iter_num": 0, "best_val_loss": 9.9,
                     "config": {"dataset": "tiny", "data_root": str(data_root)}}, str(out_dir / "ckpt.pt"))
    return root


def config(run, **overrides) -> SampleConfig:
    values = dict(out_dir=str(run / "out"), data_root=str(run / "data"), num_samples=1, max_new_tokens=8,
                  temperature=1.0, top_k=None, device="cpu", batch_size=8, num_actors=2)
    return SampleConfig(**{**values, **overrides})


def prompt_records(n=N, seed=0):
    rng = random.Random(seed)
    records = []
    for i in range(n):
        start = rng.randrange(len(TEXT) - 20)
        record = {"id": f"p{i}", "prompt": TEXT[start:start + rng.randint(1, 20)]}
        if i % 3 == 0:
            record["seed"] = 1000 + i
        if i % 10 == 0:
            record["top_k"] = 1  # greedy rows
        records.append(record)
    return records


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def reference(run, records, cfg):
    """Single-process sampling with the pure module: what every Ray path must reproduce exactly."""
    model, ckpt = load_model("resume", str(run / "out"))
    tokenizer = tokenizer_from_meta(read_meta(str(run / "data" / "tiny")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like a 1-CPU actor
    try:
        rows = list(sample_rows(model, tokenizer, expand_rows(records, cfg), BLOCK, cfg.batch_size, cfg.truncate))
    finally:
        torch.set_num_threads(threads)
    return {(r["id"], r["sample"]): r for r in rows}


def keyed(rows):
    keys = [(r["id"], r["sample"]) for r in rows]
    assert len(keys) == len(set(keys)), "an id/sample appears twice"
    return {k: r for k, r in zip(keys, rows)}


@pytest.fixture(scope="module")
def records_and_reference(run):
    records = prompt_records()
    return records, reference(run, records, config(run))


@pytest.mark.timeout(240)
def test_200_prompts_on_2_actors_match_single_process_sampling(ray_start_2_cpus, run, tmp_path, records_and_reference):
    records, expected = records_and_reference
    cfg = config(run, prompts=write_jsonl(tmp_path / "p.jsonl", records), output=str(tmp_path / "o.jsonl"))
    summary = sample_file(cfg)
    rows = read_results(cfg.output)
    got = keyed(rows)
    assert len(rows) == N and set(got) == {(f"p{i}", 0) for i in range(N)}
    assert summary["rows"] == N and summary["errors"] == 0 and summary["tokens"] == N * 8
    for key, row in got.items():
        assert row["error"] is None and row["tokens"] == 8
        assert row["completion"] == expected[key]["completion"], f"{key} differs from single-process sampling"
        assert row["seed"] == expected[key]["seed"]
    assert got[("p3", 0)]["seed"] == 1003 and got[("p10", 0)]["top_k"] == 1
    assert len({r["completion"] for r in rows}) > N // 2  # real, varied samples


@pytest.mark.timeout(240)
def test_bad_rows_get_one_error_each_and_the_rest_are_sampled(ray_start_2_cpus, run):
    good = [{"id": i, "prompt": "Speak, speak."} for i in range(6)]
    bad = [{"id": "empty", "prompt": ""}, {"id": "unknown", "prompt": "Speak ZZZ #"},
           {"id": "long", "prompt": "speak " * 10}, {"id": "settings", "prompt": "hear", "temperature": -1}]
    rows = sample_prompts(good[:3] + bad + good[3:], config(run, num_samples=2))
    got = keyed(rows)
    assert len(rows) == 2 * 10
    assert [r["id"] for r in rows[::2]] == [0, 1, 2, "empty", "unknown", "long", "settings", 3, 4, 5]  # input order
    assert got[("empty", 0)]["error"] == "empty prompt"
    assert "'Z'" in got[("unknown", 1)]["error"] and "'#'" in got[("unknown", 1)]["error"]
    assert "block_size=32" in got[("long", 0)]["error"]
    assert "temperature" in got[("settings", 0)]["error"]
    for i in range(6):
        for sample in range(2):
            assert got[(i, sample)]["error"] is None and len(got[(i, sample)]["completion"]) == 8
    truncated = sample_prompts([{"id": "long", "prompt": "speak " * 10}], config(run, truncate=True, num_actors=1))
    assert truncated[0]["error"] is None and truncated[0]["tokens"] == 8


@pytest.mark.timeout(300)
def test_an_actor_killed_mid_run_loses_no_rows(ray_start_2_cpus, run, tmp_path, records_and_reference):
    records, expected = records_and_reference
    cfg = config(run, prompts=write_jsonl(tmp_path / "p.jsonl", records), output=str(tmp_path / "o.jsonl"),
                 batch_size=4)
    actors = start_sampler_actors(cfg)
    pids = [info["pid"] for info in ray.get([a.ready.remote() for a in actors])]
    killed = []

    def kill_when_rows_appear():
        deadline = time.time() + 120
        while time.time() < deadline:
            if os.path.exists(cfg.output) and os.path.getsize(cfg.output) > 0:
                os.kill(pids[0], signal.SIGKILL)  # a crash, not a polite stop: Ray restarts the actor
                killed.append(pids[0])
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_rows_appear, daemon=True)
    killer.start()
    try:
        summary = sample_file(cfg, actors=actors)
    finally:
        killer.join(timeout=5)
        stop_actors(actors)
    assert killed, "the actor was never killed"
    assert summary["resubmitted_batches"] >= 1  # the dead actor's batches really were run again
    rows = read_results(cfg.output)
    got = keyed(rows)
    assert len(rows) == N and set(got) == set(expected)
    assert all(r["error"] is None for r in rows)
    assert all(got[k]["completion"] == expected[k]["completion"] for k in got)  # retried batches are exact too


@pytest.mark.timeout(240)
def test_resume_after_a_partial_output_adds_only_the_missing_rows(ray_start_2_cpus, run, tmp_path, records_and_reference):
    records, expected = records_and_reference
    cfg = config(run, prompts=write_jsonl(tmp_path / "p.jsonl", records), output=str(tmp_path / "o.jsonl"))
    partial = [expected[(f"p{i}", 0)] for i in range(0, N, 2)][:70]
    with open(cfg.output, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in partial) + '{"id": "p1", "sample": 0, "prom')  # torn line
    summary = sample_file(config(run, prompts=cfg.prompts, output=cfg.output, resume=True))
    assert summary["rows"] == N - 70
    rows = read_results(cfg.output)
    got = keyed(rows)
    assert len(rows) == N and set(got) == set(expected)
    assert all(got[k]["completion"] == expected[k]["completion"] for k in got)
    again = sample_file(config(run, prompts=cfg.prompts, output=cfg.output, resume=True))
    assert again["rows"] == 0 and len(read_results(cfg.output)) == N


@pytest.mark.timeout(300)
def test_parquet_in_and_out_round_trip_and_resume(ray_start_2_cpus, run, tmp_path, records_and_reference):
    records, expected = records_and_reference
    prompts = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(records), prompts)
    out = str(tmp_path / "o.parquet")
    sample_file(config(run, prompts=str(prompts), output=out))
    table = pq.read_table(out)
    assert table.num_rows == N and table.schema.field("id").type == pa.string()
    assert not os.path.exists(out + ".partial.jsonl")
    got = keyed(table.to_pylist())
    assert all(got[k]["completion"] == expected[k]["completion"] for k in expected)
    # a parquet output missing rows (an earlier run stopped) is completed by --resume, nothing duplicated
    pq.write_table(table.slice(0, 120), out)
    summary = sample_file(config(run, prompts=str(prompts), output=out, resume=True))
    assert summary["rows"] == N - 120
    resumed = keyed(pq.read_table(out).to_pylist())
    assert set(resumed) == set(expected)
    assert all(resumed[k]["completion"] == expected[k]["completion"] for k in expected)


@pytest.mark.timeout(240)
def test_txt_prompts_are_keyed_by_line_number(ray_start_2_cpus, run, tmp_path):
    lines = ["First", "All: Speak", "hear me", "", "speak."]
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(lines) + "\n")
    cfg = config(run, prompts=str(prompts), output=str(tmp_path / "o.jsonl"))
    sample_file(cfg)
    got = keyed(read_results(cfg.output))
    assert set(got) == {(n, 0) for n in range(1, 6)}
    assert [got[(n, 0)]["prompt"] for n in range(1, 6)] == lines
    assert got[(4, 0)]["error"] == "empty prompt"
    expected = reference(run, [{"id": n, "prompt": p} for n, p in enumerate(lines, start=1)], cfg)
    assert all(got[k]["completion"] == expected[k]["completion"] for k in got)


@pytest.mark.timeout(240)
def test_a_missing_checkpoint_is_one_line(ray_start_2_cpus, run, tmp_path):
    cfg = config(run, out_dir=str(tmp_path / "nothing"), num_actors=1)
    with pytest.raises(ClusterError, match="no checkpoint at"):
        sample_prompts(["First"], cfg)


@pytest.mark.timeout(300)
def test_ray_data_path_matches_single_process_sampling(ray_start_2_cpus, run, tmp_path, records_and_reference):
    records, _ = records_and_reference
    records = records[:40]
    prompts = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(records), prompts)
    cfg = config(run, num_actors=1)
    expected = reference(run, records, cfg)
    rows = sample_dataset(str(prompts), cfg).take_all()
    got = keyed(rows)
    assert set(got) == set(expected)
    assert all(got[k]["completion"] == expected[k]["completion"] and got[k]["error"] is None for k in got)
    out = tmp_path / "out_dataset"
    assert sample_dataset(str(prompts), cfg, output=str(out)) == str(out)
    written = keyed(pq.read_table(str(out)).to_pylist())
    assert {k: r["completion"] for k, r in written.items()} == {k: r["completion"] for k, r in got.items()}


@pytest.mark.timeout(300)
def test_cli_samples_a_file_on_two_actors(ray_start_2_cpus, run, tmp_path, records_and_reference):
    records, expected = records_and_reference
    prompts = write_jsonl(tmp_path / "p.jsonl", records)
    out = tmp_path / "o.jsonl"
    address = ray_start_2_cpus.address_info["gcs_address"]  # join this test's cluster, not another on the machine
    cmd = [sys.executable, "-m", "nanogpt_ray.cli", "sample", f"--prompts={prompts}", f"--output={out}",
           "--num_actors=2", f"--out_dir={run / 'out'}", f"--data_root={run / 'data'}", "--num_samples=1",
           "--max_new_tokens=8", "--temperature=1.0", "--top_k=None", "--device=cpu", "--batch_size=8",
           f"--address={address}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {N} rows (0 with an error)" in proc.stderr
    got = keyed(read_results(str(out)))
    assert set(got) == set(expected)
    assert all(got[k]["completion"] == expected[k]["completion"] for k in got)
    bad = subprocess.run(cmd[:5] + [f"--output={tmp_path / 'o.csv'}"] + cmd[6:], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "must end in .jsonl, .parquet" in bad.stderr
