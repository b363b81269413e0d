"""prepare on a real local Ray cluster: Ray Data output byte-identical to one process (line-mode txt cut into byte
ranges across the tokenizer actors too), the same documents in .txt/.jsonl/.parquet give the same tokens, errors
cross Ray as one line. The CLI's own Ray: test_prepare_ray_cli.py. The CLI end to end without Ray:
tests/unit/test_prepare_single.py."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanogpt_ray.cluster.prepare import prepare
from nanogpt_ray.config import PrepareConfig, load_config
from nanogpt_ray.corpus import PrepareError

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [f"Doc {i} says {'ab cd ' * (i % 11)}naïve café {i ** 2} — the end." for i in range(3000)]


def run(data_root, *args):
    return prepare(load_config(PrepareConfig, [], ["--dataset=text", f"--data_root={data_root}", "--progress=False", *args]))


def read(folder):
    return {split: (folder / f"{split}.bin").read_bytes() for split in ("train", "val")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Mixed formats and several units per file: jsonl cut into 1 MB ranges, parquet row groups, txt files."""
    root = tmp_path_factory.mktemp("corpus")
    long_docs = [d * 50 for d in DOCS[:900]]  # ~2.6 MB: three units at chunk_mb=1
    (root / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in long_docs), encoding="utf-8")
    pq.write_table(pa.table({"text": DOCS[900:2000]}), root / "b.parquet", row_group_size=200)
    (root / "c.txt").write_text("\n".join(DOCS[2000:]) + "\n", encoding="utf-8")
    for i in range(3):
        (root / f"d{i}.txt").write_text(DOCS[i] + "\n\nwith a blank line\n", encoding="utf-8")
    return root


def test_ray_output_is_byte_identical_to_one_process(ray_start_2_cpus, corpus, tmp_path):
    inputs = f"--input={corpus}/a.jsonl,{corpus}/b.parquet,{corpus}/c.txt,{corpus}/d*.txt"
    single = run(tmp_path, inputs, "--output_name=single", "--parallel=False", "--chunk_mb=1")
    ray_meta = run(tmp_path, inputs, "--output_name=ray", "--parallel=True", "--chunk_mb=1", "--num_workers=2")
    assert read(tmp_path / "ray") == read(tmp_path / "single")
    assert ray_meta == single
    assert single["documents"] == 900 + 1100 + 1 + 3  # c.txt is one document in the default per-file mode
    assert single["val_tokens"] > 0 and single["train_tokens"] > 500_000
    assert sorted(os.listdir(tmp_path / "ray")) == ["meta.json", "train.bin", "val.bin"]


def test_txt_jsonl_parquet_with_the_same_documents_give_the_same_tokens(ray_start_2_cpus, tmp_path):
    docs = DOCS[:1500]
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs), encoding="utf-8")
    pq.write_table(pa.table({"body": docs}), tmp_path / "docs.parquet", row_group_size=100)
    out = tmp_path / "out"
    txt = run(out, f"--input={tmp_path}/docs.txt", "--txt_mode=line", "--output_name=txt", "--parallel=True")
    jsonl = run(out, f"--input={tmp_path}/docs.jsonl", "--field=body", "--output_name=jsonl", "--parallel=True")
    parquet = run(out, f"--input={tmp_path}/docs.parquet", "--field=body", "--output_name=parquet", "--parallel=True")
    assert read(out / "txt") == read(out / "jsonl") == read(out / "parquet")
    assert txt["documents"] == jsonl["documents"] == parquet["documents"] == 1500
    eot = np.frombuffer(read(out / "parquet")["train"] + read(out / "parquet")["val"], dtype=np.uint16) == 50256
    assert int(eot.sum()) == 1500


def test_a_bad_file_fails_across_ray_with_one_line_and_nothing_written(ray_start_2_cpus, corpus, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("good start ".encode() * 1000 + b"\x80 not utf-8")
    with pytest.raises(PrepareError) as info:
        run(tmp_path / "out", f"--input={corpus}/a.jsonl,{bad},{corpus}/c.txt", "--parallel=True", "--chunk_mb=1")
    message = str(info.value)
    assert message == f"{bad} is not UTF-8 (byte 11,000); pass --errors=replace to substitute U+FFFD"
    folder = tmp_path / "out" / "text"
    assert not folder.exists() or os.listdir(folder) == []


def test_dataset_script_joins_a_running_cluster(ray_start_2_cpus, corpus, tmp_path):
    """data/text/prepare.py as a user runs it, on the cluster this module started (--address)."""
    address = ray_start_2_cpus.address_info["address"]
    script = REPO_ROOT / "data" / "text" / "prepare.py"
    done = subprocess.run([sys.executable, str(script), f"--input={corpus}/b.parquet", f"--data_root={tmp_path}",
                           "--parallel=True", f"--address={address}", "--progress=False"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=150,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1,100 documents" in done.stdout and "tokens/s" in done.stdout
    # --data_root given on the command line wins over the script's own folder
    assert json.loads((tmp_path / "text" / "meta.json").read_text())["documents"] == 1100


def test_a_cluster_with_no_free_cpu_is_an_error_not_a_hang(ray_start_2_cpus, corpus, tmp_path):
    import time

    import ray

    @ray.remote(num_cpus=2)
    class Hog:
        def ready(self):
            return True

    hog = Hog.remote()
    try:
        assert ray.get(hog.ready.remote(), timeout=60)
        with pytest.raises(PrepareError, match=r"no free CPU on the Ray cluster \(2 CPUs.*--parallel=False"):
            run(tmp_path, f"--input={corpus}/b.parquet", "--parallel=True")
        assert os.listdir(tmp_path / "text") == []  # refused before any output was started
    finally:
        ray.kill(hog)
        deadline = time.time() + 30
        while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
            time.sleep(0.2)


OUTPUTS = ("train.bin", "val.bin", "meta.json")


def outputs(folder: pathlib.Path) -> dict:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


@pytest.mark.timeout(180)
def test_line_mode_byte_ranges_across_actors_match_one_process(ray_start_2_cpus, speeches_dir, tmp_path):
    spec = str(speeches_dir / "lines" / "*.txt")
    keys = dict(dataset="text", input=spec, txt_mode="line", chunk_mb=1, progress=False)  # a.txt: 3 units
    single = prepare(PrepareConfig(data_root=str(tmp_path / "single"), parallel=False, **keys))
    parallel = prepare(PrepareConfig(data_root=str(tmp_path / "ray"), parallel=True, **keys))
    assert parallel == single
    assert single["documents"] > 60_000 and single["val_tokens"] > 10_000
    assert outputs(tmp_path / "ray" / "text") == outputs(tmp_path / "single" / "text")
    assert sorted(os.listdir(tmp_path / "ray" / "text")) == sorted(OUTPUTS)
