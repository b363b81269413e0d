"""prepare without Ray: tiny Shakespeare byte for byte as nanoGPT, documents from files, and every bad input
giving its own one-line error with nothing half-written."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
import torch

from nanogpt_ray.cli import cmd_prepare
from nanogpt_ray.config import ConfigError, PrepareConfig, load_config
from nanogpt_ray.corpus import read_range
from nanogpt_ray.data import get_batch, load_split
from nanogpt_ray.prepare import PrepareError, in_val, prepare
from nanogpt_ray.tokenizer import CharTokenizer, read_meta

GPT2_EOT = 50256
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def gpt2():
    """tiktoken's gpt2 encoding is r50k_base's ranks under another name; the offline cache holds r50k_base."""
    return tiktoken.get_encoding("r50k_base")


def run(tmp_path, *args, **keys):
    """prepare() through the same config loading as the CLI; single process unless a test says otherwise."""
    overrides = [f"--{k}={v}" for k, v in {"data_root": tmp_path / "out", "progress": False, **keys}.items()]
    if "dataset" not in keys and "parallel" not in keys:
        overrides.append("--parallel=False")
    return prepare(load_config(PrepareConfig, [], [*args, *overrides]))


def out_dir(tmp_path, name):
    return tmp_path / "out" / name


# ----------------------------------------------------------------------------- nanoGPT's own prepare scripts

def nanogpt_shakespeare_char(text: str):
    """data/shakespeare_char/prepare.py from nanoGPT, minus the download."""
    chars = sorted(list(set(text)))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(text)
    train_data, val_data = text[:int(n * 0.9)], text[int(n * 0.9):]
    train_ids = np.array([stoi[c] for c in train_data], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in val_data], dtype=np.uint16)
    return train_ids.tobytes(), val_ids.tobytes(), chars


def nanogpt_shakespeare(text: str):
    """data/shakespeare/prepare.py from nanoGPT, minus the download."""
    enc = gpt2()  # nanoGPT: tiktoken.get_encoding("gpt2")
    n = len(text)
    train_data, val_data = text[:int(n * 0.9)], text[int(n * 0.9):]
    train_ids = np.array(enc.encode_ordinary(train_data), dtype=np.uint16)
    val_ids = np.array(enc.encode_ordinary(val_data), dtype=np.uint16)
    return train_ids.tobytes(), val_ids.tobytes()


def test_shakespeare_char_matches_nanogpt_byte_for_byte(tmp_path, shakespeare_path, capsys):
    meta = run(tmp_path, "--dataset=shakespeare_char", f"--input={shakespeare_path}")
    train, val, chars = nanogpt_shakespeare_char(shakespeare_path.read_text(encoding="utf-8"))
    folder = out_dir(tmp_path, "shakespeare_char")
    assert (folder / "train.bin").read_bytes() == train
    assert (folder / "val.bin").read_bytes() == val
    assert len(train) // 2 == 1_003_854 and len(val) // 2 == 111_540
    on_disk = json.loads((folder / "meta.json").read_text())
    assert on_disk == meta
    assert on_disk["vocab_size"] == 65 and on_disk["chars"] == chars and on_disk["dtype"] == "uint16"
    assert (on_disk["train_tokens"], on_disk["val_tokens"]) == (1_003_854, 111_540)
    assert os.path.samefile(on_disk["source"], shakespeare_path) and os.path.isabs(on_disk["source"])
    assert sorted(os.listdir(folder)) == ["meta.json", "train.bin", "val.bin"]  # no temporary files left over
    summary = capsys.readouterr().out
    assert "1 documents, 1,003,854 train + 111,540 val tokens" in summary and "tokens/s" in summary


def test_shakespeare_gpt2_matches_nanogpt_byte_for_byte(tmp_path, shakespeare_path):
    meta = run(tmp_path, "--dataset=shakespeare", f"--input={shakespeare_path}")
    train, val = nanogpt_shakespeare(shakespeare_path.read_text(encoding="utf-8"))
    folder = out_dir(tmp_path, "shakespeare")
    assert (folder / "train.bin").read_bytes() == train
    assert (folder / "val.bin").read_bytes() == val
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_059)
    assert (meta["vocab_size"], meta["tokenizer"], meta["dtype"]) == (50257, "gpt2", "uint16")


def test_training_loader_reads_what_prepare_wrote(tmp_path, shakespeare_path):
    run(tmp_path, "--dataset=shakespeare_char", f"--input={shakespeare_path}")
    folder = str(out_dir(tmp_path, "shakespeare_char"))
    text = shakespeare_path.read_text(encoding="utf-8")
    train, val = load_split(folder, "train"), load_split(folder, "val")
    assert (len(train), len(val)) == (1_003_854, 111_540)
    tokenizer = CharTokenizer(read_meta(folder)["chars"])
    x, y = get_batch(train, batch_size=4, block_size=32, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    for row in x.tolist():
        assert tokenizer.decode(row) in text
    assert tokenizer.decode(val[:40].tolist()) == text[1_003_854:1_003_894]


def test_vocab_over_65536_is_stored_as_uint32_and_round_trips(tmp_path):
    # 70,000 distinct characters (no surrogates): a char vocabulary that does not fit uint16
    chars = [chr(c) for c in range(0x21, 0x21 + 75_000) if not 0xD800 <= c <= 0xDFFF][:70_000]
    text = "".join(chars) + "".join(reversed(chars))
    source = tmp_path / "wide.txt"
    source.write_text(text, encoding="utf-8")
    meta = run(tmp_path, "--dataset=shakespeare_char", f"--input={source}")
    folder = str(out_dir(tmp_path, "shakespeare_char"))
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_000
    train, val = load_split(folder, "train"), load_split(folder, "val")
    assert train.dtype == np.uint32 and int(train.max()) > 65_535
    tokenizer = CharTokenizer(read_meta(folder)["chars"])
    assert tokenizer.decode(np.concatenate([train, val]).tolist()) == text
    x, y = get_batch(train, batch_size=8, block_size=16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x[:, 1:], y[:, :-1]) and all(tokenizer.decode(row) in text for row in x.tolist())


def test_shakespeare_is_downloaded_once_then_read_from_the_local_copy(tmp_path, shakespeare_path):
    # a file:// URL stands in for the network: same code path, nothing leaves the machine
    run(tmp_path, "--dataset=shakespeare_char", f"--url={shakespeare_path.resolve().as_uri()}")
    cached = out_dir(tmp_path, "shakespeare_char") / "input.txt"
    assert cached.read_bytes() == shakespeare_path.read_bytes()
    meta = run(tmp_path, "--dataset=shakespeare", "--url=file:///nonexistent/input.txt")
    assert meta["source"] == str(cached.resolve())  # the sibling dataset's copy: no download attempted
    assert meta["train_tokens"] == 301_966


def test_no_network_and_no_copy_says_to_pass_input(tmp_path):
    with pytest.raises(PrepareError, match=r"pass a local copy with --input="):
        run(tmp_path, "--dataset=shakespeare_char", "--url=file:///nonexistent/input.txt")
    assert not (out_dir(tmp_path, "shakespeare_char") / "train.bin").exists()


# ----------------------------------------------------------------------------- documents

DOCS = [f"Document {i}: {'to be or not to be ' * (i % 7 + 1)}é€ {i * 37}" for i in range(400)]


def expected_tokens(docs, seed=2357, val_fraction=0.1):
    enc = gpt2()
    train, val = [], []
    for doc in docs:
        (val if in_val(doc, seed, val_fraction) else train).extend(enc.encode_ordinary(doc) + [GPT2_EOT])
    return np.array(train, dtype=np.uint16).tobytes(), np.array(val, dtype=np.uint16).tobytes()


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def test_jsonl_documents_are_encoded_and_separated_by_eot(tmp_path, capsys):
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    meta = run(tmp_path, "--dataset=text", f"--input={source}")
    train, val = expected_tokens(DOCS)
    folder = out_dir(tmp_path, "text")
    assert (folder / "train.bin").read_bytes() == train and (folder / "val.bin").read_bytes() == val
    assert 10 < meta["val_tokens"] and meta["documents"] == 400 and meta["train_tokens"] == len(train) // 2
    tokens = np.frombuffer(train + val, dtype=np.uint16)
    assert int((tokens == GPT2_EOT).sum()) == 400
    assert "400 documents" in capsys.readouterr().out


def test_val_split_depends_on_seed_and_fraction_only(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    a = run(tmp_path, "--dataset=text", f"--input={source}", "--output_name=a", "--seed=1")
    b = run(tmp_path, "--dataset=text", f"--input={source}", "--output_name=b", "--seed=2")
    c = run(tmp_path, "--dataset=text", f"--input={source}", "--output_name=c", "--seed=1", "--val_fraction=0.5")
    again = run(tmp_path, "--dataset=text", f"--input={source}", "--output_name=d", "--seed=1")
    assert (tmp_path / "out/a/val.bin").read_bytes() == (tmp_path / "out/d/val.bin").read_bytes()
    assert a == {**again, "source": a["source"]}
    assert (tmp_path / "out/a/val.bin").read_bytes() != (tmp_path / "out/b/val.bin").read_bytes()
    assert c["val_tokens"] > 3 * a["val_tokens"]
    assert b["train_tokens"] + b["val_tokens"] == a["train_tokens"] + a["val_tokens"]  # a split, never a loss


def test_chunking_a_file_does_not_change_a_byte(tmp_path):
    docs = [d * 60 for d in DOCS]  # ~2.6 MB of jsonl: three 1 MB work units
    source = write_jsonl(tmp_path / "big.jsonl", docs)
    assert source.stat().st_size > 2 * 2**20
    run(tmp_path, "--dataset=text", f"--input={source}", "--output_name=small", "--chunk_mb=1")
    run(tmp_path, "--dataset=text", f"--input={source}", "--output_name=whole", "--chunk_mb=64")
    for split in ("train", "val"):
        assert (tmp_path / f"out/small/{split}.bin").read_bytes() == (tmp_path / f"out/whole/{split}.bin").read_bytes()
    assert (tmp_path / "out/small/train.bin").read_bytes() == expected_tokens(docs)[0]


@pytest.mark.parametrize("step", [1, 5, 7, 64, 10_000])
def test_byte_ranges_hand_out_every_line_exactly_once(tmp_path, step):
    lines = [b"", b"a", b"bb\r", "ünïcødé".encode(), b"x" * 30, b"", b"last without newline"]
    data = b"\n".join(lines)
    path = tmp_path / "lines.txt"
    path.write_bytes(data)
    pieces = [read_range(str(path), s, min(s + step, len(data)))[0] for s in range(0, len(data), step)]
    assert b"".join(pieces) == data
    assert all(p == b"" or p.endswith(b"\n") or p.endswith(b"newline") for p in pieces)


def test_txt_files_per_file_and_per_line_and_file_uris(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, doc in enumerate(DOCS[:20]):
        (folder / f"{i:03d}.txt").write_text(doc + "\nsecond line\n", encoding="utf-8")
    per_file = run(tmp_path, "--dataset=text", f"--input={folder}/*.txt", "--output_name=file")
    assert per_file["documents"] == 20
    assert (tmp_path / "out/file/train.bin").read_bytes() == expected_tokens([d + "\nsecond line\n" for d in DOCS[:20]])[0]
    per_line = run(tmp_path, "--dataset=text", f"--input={folder}/*.txt", "--output_name=line", "--txt_mode=line")
    assert per_line["documents"] == 40
    # the same files through pyarrow's filesystems (the s3:// / gs:// code path, with file://)
    uri = run(tmp_path, "--dataset=text", f"--input={folder.as_uri()}/*.txt", "--output_name=uri")
    assert (tmp_path / "out/uri/train.bin").read_bytes() == (tmp_path / "out/file/train.bin").read_bytes()
    assert uri["documents"] == 20


def test_parquet_row_groups_give_the_jsonl_tokens(tmp_path):
    write_jsonl(tmp_path / "docs.jsonl", DOCS)
    pq.write_table(pa.table({"body": DOCS, "n": list(range(len(DOCS)))}), tmp_path / "docs.parquet", row_group_size=64)
    assert pq.ParquetFile(tmp_path / "docs.parquet").num_row_groups == 7
    run(tmp_path, "--dataset=text", f"--input={tmp_path / 'docs.jsonl'}", "--output_name=jsonl")
    run(tmp_path, "--dataset=text", f"--input={tmp_path / 'docs.parquet'}", "--output_name=parquet", "--field=body")
    for split in ("train", "val"):
        assert (tmp_path / f"out/parquet/{split}.bin").read_bytes() == (tmp_path / f"out/jsonl/{split}.bin").read_bytes()


def test_openwebtext_from_local_files(tmp_path):
    source = write_jsonl(tmp_path / "owt.jsonl", [f"web page {i}" for i in range(20_000)])
    meta = run(tmp_path, "--dataset=openwebtext", f"--input={source}", "--parallel=False")
    assert meta["val_fraction"] == 0.0005 and meta["seed"] == 2357 and meta["documents"] == 20_000
    assert 0 < meta["val_tokens"] < 0.002 * meta["train_tokens"]  # nanoGPT's 0.05% of documents
    assert (out_dir(tmp_path, "openwebtext") / "train.bin").stat().st_size == 2 * meta["train_tokens"]


# ----------------------------------------------------------------------------- bad input: one line each

def assert_nothing_written(tmp_path, name="text"):
    folder = out_dir(tmp_path, name)
    assert not folder.exists() or not any(folder.iterdir()), sorted(os.listdir(folder))


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(PrepareError, match=r"input file '.*nope\.jsonl' does not exist"):
        run(tmp_path, "--dataset=text", f"--input={tmp_path / 'nope.jsonl'}")
    with pytest.raises(PrepareError, match=r"no input files match '.*\*\.parquet'"):
        run(tmp_path, "--dataset=text", f"--input={tmp_path}/*.parquet")
    with pytest.raises(PrepareError, match=r"input file '.*nope\.txt' does not exist"):
        run(tmp_path, "--dataset=shakespeare_char", f"--input={tmp_path / 'nope.txt'}")
    with pytest.raises(PrepareError, match=r"no input files match"):
        run(tmp_path, "--dataset=text", f"--input={tmp_path.as_uri()}/missing/*.jsonl")
    assert not (tmp_path / "out").exists()  # inputs are checked before the output folder is even made


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    with pytest.raises(PrepareError, match=r"is empty: nothing to prepare"):
        run(tmp_path, "--dataset=text", f"--input={tmp_path / 'empty.txt'}")
    with pytest.raises(PrepareError, match=r"holds 0 documents"):
        run(tmp_path, "--dataset=text", f"--input={tmp_path / 'blank.txt'}", "--txt_mode=line")
    with pytest.raises(PrepareError, match=r"is empty"):
        run(tmp_path, "--dataset=shakespeare_char", f"--input={tmp_path / 'empty.txt'}")
    assert_nothing_written(tmp_path)
    assert_nothing_written(tmp_path, "shakespeare_char")


def test_bytes_that_are_not_utf8_name_the_file_unless_replaced(tmp_path):
    good = write_jsonl(tmp_path / "a.jsonl", DOCS[:50])
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"fine text\nthen \xff\xfe broken\n")
    with pytest.raises(PrepareError, match=r"b\.txt is not UTF-8 \(byte 15\); pass --errors=replace"):
        run(tmp_path, "--dataset=text", f"--input={good},{bad}")
    assert_nothing_written(tmp_path)
    meta = run(tmp_path, "--dataset=text", f"--input={good},{bad}", "--errors=replace")
    assert meta["documents"] == 51
    tokens = np.fromfile(out_dir(tmp_path, "text") / "train.bin", dtype=np.uint16).tolist() + \
        np.fromfile(out_dir(tmp_path, "text") / "val.bin", dtype=np.uint16).tolist()
    assert "\ufffd" in gpt2().decode(tokens)


def test_missing_jsonl_field_and_parquet_column(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", DOCS[:10], field="content")
    with pytest.raises(PrepareError, match=r"docs\.jsonl: the first record has no field 'text' \(it has: content, id\)"):
        run(tmp_path, "--dataset=text", f"--input={source}")
    pq.write_table(pa.table({"body": DOCS[:10]}), tmp_path / "docs.parquet")
    with pytest.raises(PrepareError, match=r"docs\.parquet has no column 'text' \(columns: body\)"):
        run(tmp_path, "--dataset=text", f"--input={tmp_path / 'docs.parquet'}")
    pq.write_table(pa.table({"text": list(range(10))}), tmp_path / "numbers.parquet")
    with pytest.raises(PrepareError, match=r"column 'text' holds int64, not text"):
        run(tmp_path, "--dataset=text", f"--input={tmp_path / 'numbers.parquet'}")
    # a later record without the field is caught while tokenizing, still without leaving anything behind
    (tmp_path / "later.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(PrepareError, match=r"later\.jsonl \(byte 14\): a record without field 'text'"):
        run(tmp_path, "--dataset=text", f"--input={tmp_path / 'later.jsonl'}")
    assert_nothing_written(tmp_path)


def test_unwritable_output_is_caught_before_any_work(tmp_path):
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"\xff")  # would fail while tokenizing: the output check must come first
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(PrepareError, match=r"cannot write to .*a_file.*; choose another --data_root"):
        prepare(load_config(PrepareConfig, [], ["--dataset=text", f"--input={bad}", f"--data_root={tmp_path / 'a_file'}",
                                                "--parallel=False"]))
    with pytest.raises(PrepareError, match=r"cannot write to"):
        prepare(load_config(PrepareConfig, [], ["--dataset=shakespeare_char", f"--input={bad}",
                                                f"--data_root={tmp_path / 'a_file'}"]))


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_val_fraction_outside_zero_one(tmp_path, fraction):
    with pytest.raises(ConfigError, match=rf"val_fraction={float(fraction)} must be in \(0, 1\)"):
        run(tmp_path, "--dataset=text", f"--input={tmp_path}", f"--val_fraction={fraction}")


def test_config_mistakes(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown dataset 'shakespear'; did you mean 'shakespeare'"):
        load_config(PrepareConfig, [], ["--dataset=shakespear"])
    with pytest.raises(ConfigError, match=r"dataset 'text' needs --input"):
        load_config(PrepareConfig, [], ["--dataset=text"])
    with pytest.raises(ConfigError, match=r"errors='ignore'"):
        load_config(PrepareConfig, [], ["--errors=ignore"])


def test_openwebtext_without_files_or_hub_says_to_pass_input(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PrepareError, match=r"--input=PATHS"):
        run(tmp_path, "--dataset=openwebtext", "--parallel=False")


def test_failure_keeps_the_previous_complete_output(tmp_path):
    good = write_jsonl(tmp_path / "a.jsonl", DOCS)
    run(tmp_path, "--dataset=text", f"--input={good}")
    folder = out_dir(tmp_path, "text")
    before = {name: (folder / name).read_bytes() for name in ("train.bin", "val.bin", "meta.json")}
    bad = tmp_path / "z.txt"
    bad.write_bytes(b"\xc3")
    with pytest.raises(PrepareError, match=r"z\.txt is not UTF-8"):
        run(tmp_path, "--dataset=text", f"--input={good},{bad}")
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(folder)) == ["meta.json", "train.bin", "val.bin"]


def test_help_lists_the_keys(capsys):
    assert cmd_prepare(["--help"]) == 0
    out = capsys.readouterr().out
    for key in ("data_root", "val_fraction", "txt_mode", "errors", "num_workers", "chunk_mb"):
        assert key in out


def test_dataset_scripts_call_the_package():
    root = pathlib.Path(__file__).resolve().parents[2]
    for name in ("shakespeare_char", "shakespeare", "openwebtext", "text"):
        script = (root / "data" / name / "prepare.py").read_text()
        assert f'"prepare", "{name}"' in script and len(script.splitlines()) < 15


def test_prepare_keeps_the_loaders_dtype_rule_without_importing_torch():
    from nanogpt_ray.tokenizer import token_dtype_for  # the one rule prepare writes and data.py's loader reads

    assert [token_dtype_for(v) for v in (65, 50257, 65536, 65537, 100277)] == ["uint16"] * 3 + ["uint32"] * 2
    code = "import sys, nanogpt_ray.prepare; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_shakespeare_char_without_input_reads_the_copy_shipped_with_the_project(tmp_path, monkeypatch):
    from nanogpt_ray.prepare import SHIPPED_SHAKESPEARE

    monkeypatch.delenv("SHAKESPEARE_INPUT", raising=False)
    monkeypatch.setattr("urllib.request.urlopen", None)  # any download attempt would fail loudly
    meta = run(tmp_path, "--dataset=shakespeare_char")
    shipped = pathlib.Path(__file__).resolve().parents[2] / "data" / "shakespeare_char" / "input.txt.gz"
    assert meta["source"] == SHIPPED_SHAKESPEARE and os.path.samefile(meta["source"], shipped)
    assert meta["vocab_size"] == 65 and meta["train_tokens"] == 1_003_854 and meta["val_tokens"] == 111_540
    on_disk = read_meta(str(out_dir(tmp_path, "shakespeare_char")))
    assert on_disk["source"] == str(shipped) and on_disk["train_tokens"] == 1_003_854
    assert os.path.getsize(out_dir(tmp_path, "shakespeare_char") / "val.bin") == 111_540 * 2  # uint16


def cli(*args):
    """`nanogpt-ray prepare` in a fresh interpreter; below 64 MB of input it starts no Ray."""
    return subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", "prepare", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_prepares_shakespeare_char_and_bad_input_exits_2_with_one_line(shakespeare_path, tmp_path):
    done = cli("shakespeare_char", f"--input={shakespeare_path}", f"--data_root={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert "1,003,854 train + 111,540 val tokens" in done.stdout
    meta = json.loads((tmp_path / "shakespeare_char" / "meta.json").read_text())
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (65, 1_003_854, 111_540)
    assert (tmp_path / "shakespeare_char" / "train.bin").stat().st_size == 2 * 1_003_854

    failed = cli("text", f"--input={tmp_path}/nothing/*.jsonl", f"--data_root={tmp_path}")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        f"nanogpt-ray prepare: error: no input files match '{tmp_path}/nothing/*.jsonl'"]
    failed = cli("shakespeare_char", f"--input={shakespeare_path}", "--val_fraction=1.5", f"--data_root={tmp_path}")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "val_fraction=1.5 must be in (0, 1)" in failed.stderr
