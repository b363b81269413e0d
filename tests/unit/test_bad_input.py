"""Bad input ends in one line on stderr naming the bad value and what would be accepted, exit code 2, no
traceback, and nothing lost: every case here went wrong with a traceback before. The CLI is driven for real
(`cli.main`), with files the tests write; where no command reaches a function, the function is called."""

import json
import os
import pathlib
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nanogpt_ray import cli
from nanogpt_ray.batch_sampling import read_prompts
from nanogpt_ray.checkpoint import save_checkpoint
from nanogpt_ray.config import MissingExtraError, TrainConfig, UserError
from nanogpt_ray.data import DataError, max_token_id, read_token_dtype
from nanogpt_ray.device import DeviceError, resolve_device
from nanogpt_ray.hf import PretrainedError, from_pretrained, read_safetensors
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.preflight import LaunchError, check_placement
from nanogpt_ray.tokenizer import CharTokenizer, TokenizerError, read_meta
from nanogpt_ray.train_loop import run_bare
from tests.train_data import make_dataset, tiny_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"
pytestmark = pytest.mark.timeout(120)


def one_line_error(capsys, command, argv):
    """Run `nanogpt-ray <command> argv`; assert exit 2, one stderr line, no stdout; return the line."""
    code = cli.main([command, *map(str, argv)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"nanogpt-ray {command}: error: "), lines[0]
    assert "Traceback" not in err and out == ""
    return lines[0]


def run_python(code, cwd, **env):
    """A fresh interpreter (so an optional module can be made unimportable for real), our package on its path."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


def write_dataset(folder, tokens, meta):
    folder.mkdir(parents=True, exist_ok=True)
    dtype = meta.get("dtype", "uint16") if isinstance(meta, dict) else "uint16"
    for split in ("train", "val"):
        np.asarray(tokens, dtype=dtype if dtype in ("uint16", "uint32") else "uint16").tofile(folder / f"{split}.bin")
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta) if isinstance(meta, dict) else meta)
    return folder


def train_args(tmp_path, dataset="tiny"):
    """A tiny run whose pre-flight reaches the dataset checks (all before Ray starts)."""
    return [f"--data_root={tmp_path / 'data'}", f"--dataset={dataset}", f"--out_dir={tmp_path / 'out'}",
            f"--storage_path={tmp_path / 'storage'}", "--block_size=8", "--batch_size=2", "--n_layer=1",
            "--n_head=1", "--n_embd=8", "--device=cpu"]


@pytest.fixture
def char_run(tmp_path):
    """out_dir/ckpt.pt of a random 1-layer char model over data_root/tiny/meta.json (rewritten by tests)."""
    tok = CharTokenizer.from_text(TEXT)
    data = write_dataset(tmp_path / "data" / "tiny", tok.encode(TEXT), tok.meta())
    args = dict(n_layer=1, n_head=1, n_embd=8, block_size=8, bias=False, vocab_size=tok.vocab_size, dropout=0.0)
    ckpt = {"model": GPT(GPTConfig(**args)).state_dict(), "optimizer": {}, "model_args": args, "iter_num": 0,
            "best_val_loss": 9.0, "config": {"dataset": "tiny", "data_root": str(tmp_path / "data")}}
    save_checkpoint(ckpt, str(tmp_path / "out" / "ckpt.pt"))
    return dict(out_dir=tmp_path / "out", data=data, tok=tok)


def sample_args(run):
    return [f"--out_dir={run['out_dir']}", "--device=cpu", "--max_new_tokens=2", "--num_samples=1"]


# ---------------------------------------------------------------------------- config files

@pytest.mark.parametrize("body, line, kind", [
    ("batch_size = 4\nlearning_rate = 1e-3 +\n", 2, "SyntaxError"),
    ("batch_size = 4\n\nmax_iters = max_iter * 2\n", 3, "NameError: name 'max_iter' is not defined"),
    ("warmup_iters = 1 / 0\n", 1, "ZeroDivisionError: division by zero"),
])
def test_python_error_in_a_config_file_names_the_file_and_line(tmp_path, capsys, body, line, kind):
    path = tmp_path / "train_mine.py"
    path.write_text(body)
    message = one_line_error(capsys, "train", [path])
    assert f"config file '{path}', line {line}: {kind}" in message


def test_a_directory_given_as_config_file_says_so(tmp_path, capsys):
    assert "is a directory" in one_line_error(capsys, "train", [tmp_path])


# ---------------------------------------------------------------------------- dataset meta and token files

def test_corrupt_meta_json_stops_train_before_ray(tmp_path, capsys):
    write_dataset(tmp_path / "data" / "tiny", range(20), '{"vocab_size": 65, "chars": [')
    message = one_line_error(capsys, "train", train_args(tmp_path))
    assert "meta.json is not valid JSON" in message
    assert not (tmp_path / "storage").exists()  # nothing was started or written


def test_corrupt_meta_pkl_stops_train(tmp_path, capsys):
    folder = write_dataset(tmp_path / "data" / "tiny", range(20), None)
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 65, "itos": {0: "a"}})[:-7])  # truncated
    message = one_line_error(capsys, "train", train_args(tmp_path))
    assert "meta.pkl is not a readable pickle" in message


def test_invalid_token_dtype_in_meta_json_names_the_dtypes_accepted(tmp_path, capsys):
    write_dataset(tmp_path / "data" / "tiny", range(20), {"vocab_size": 65, "dtype": "float32"})
    message = one_line_error(capsys, "train", train_args(tmp_path))
    assert "dtype 'float32'" in message and "uint16 or uint32" in message
    (tmp_path / "data" / "tiny" / "meta.json").write_text('{"dtype": "no_such_type"}')
    with pytest.raises(DataError, match="'no_such_type'"):
        read_token_dtype(str(tmp_path / "data" / "tiny"))


def test_corrupt_meta_json_stops_sample(char_run, capsys):
    (char_run["data"] / "meta.json").write_bytes(b"\xff\xfe not json")
    assert "meta.json is not valid JSON" in one_line_error(capsys, "sample", sample_args(char_run))


def test_char_meta_without_chars_stops_sample(char_run, capsys):
    (char_run["data"] / "meta.json").write_text(json.dumps({"tokenizer": "char", "vocab_size": 20}))
    assert "no 'chars' list" in one_line_error(capsys, "sample", sample_args(char_run))


def test_meta_json_that_is_not_an_object(tmp_path):
    (tmp_path / "meta.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="JSON list, not an object"):
        read_meta(str(tmp_path))


def test_token_ids_beyond_the_vocabulary_stop_train_in_preflight(tmp_path, capsys):
    write_dataset(tmp_path / "data" / "tiny", [1, 2, 3] * 10 + [70], {"vocab_size": 65, "dtype": "uint16"})
    message = one_line_error(capsys, "train", train_args(tmp_path))
    assert "token id 70" in message and "vocab_size is 65" in message and "train.bin" in message


def test_token_ids_beyond_the_vocabulary_stop_the_loop_before_a_step(tmp_path):
    # the loop checks too (a bare or torchrun run has no pre-flight): one DataError, not an IndexError mid-step
    write_dataset(tmp_path / "data" / "tiny", [1, 2, 3] * 10 + [65], {"vocab_size": 65, "dtype": "uint16"})
    cfg = TrainConfig(data_root=str(tmp_path / "data"), dataset="tiny", out_dir=str(tmp_path / "out"),
                      block_size=8, batch_size=2, n_layer=1, n_head=1, n_embd=8, device="cpu", max_iters=2,
                      eval_iters=1, eval_interval=1, log_interval=1, gradient_accumulation_steps=1)
    with pytest.raises(DataError, match="token id 65, but the model's vocab_size is 65"):
        run_bare(cfg)
    assert not (tmp_path / "out" / "ckpt.pt").exists()


def test_max_token_id_reads_in_chunks():
    data = np.array([3, 9, 1, 4, 12, 0, 7], dtype=np.uint16)
    assert max_token_id(data, chunk=2) == 12 == max_token_id(data)
    assert max_token_id(np.array([], dtype=np.uint16)) == -1


# ---------------------------------------------------------------------------- prompts files

def batch_args(run, prompts, tmp_path):
    return [*sample_args(run), f"--prompts={prompts}", f"--output={tmp_path / 'results.jsonl'}"]


@pytest.mark.parametrize("name, content, expected", [
    ("prompts.txt", b"ROMEO:\nhello \xff world\n", "prompts.txt:2 is not UTF-8 text (byte b'\\xff' at column 7)"),
    ("prompts.jsonl", b'{"prompt": "ROMEO:"}\n{"prompt": "\xe9t\xe9"}\n', "prompts.jsonl:2 is not UTF-8 text"),
    ("prompts.jsonl", b'{"prompt": "ROMEO:"}\n{"prompt": \n', "prompts.jsonl:2 is not valid JSON"),
    ("prompts.parquet", b"PAR1 this is not a parquet file", "prompts.parquet is not a readable parquet file"),
    ("prompts.txt", b"", "holds no prompts"),
])
def test_bad_prompts_file_fails_before_ray_starts(char_run, tmp_path, capsys, name, content, expected):
    import ray

    prompts = tmp_path / name
    prompts.write_bytes(content)
    assert expected in one_line_error(capsys, "sample", batch_args(char_run, prompts, tmp_path))
    assert not ray.is_initialized()
    assert not (tmp_path / "results.jsonl").exists()


def test_prompts_or_output_that_is_a_directory(char_run, tmp_path, capsys):
    (tmp_path / "prompts.txt").mkdir()
    assert "is a directory" in one_line_error(capsys, "sample", batch_args(char_run, tmp_path / "prompts.txt", tmp_path))
    (tmp_path / "p.txt").write_text("ROMEO:\n")
    (tmp_path / "results.jsonl").mkdir()
    message = one_line_error(capsys, "sample", batch_args(char_run, tmp_path / "p.txt", tmp_path))
    assert "output" in message and "is a directory" in message


def test_windows_line_ends_are_read_like_text_mode(tmp_path):
    (tmp_path / "p.txt").write_bytes(b"one\r\ntwo\n")
    assert [r["prompt"] for r in read_prompts(str(tmp_path / "p.txt"))] == ["one", "two"]


def test_start_file_not_utf8_or_a_directory(char_run, tmp_path, capsys):
    (tmp_path / "prompt.txt").write_bytes(b"RO\xffMEO")
    message = one_line_error(capsys, "sample", [*sample_args(char_run), f"--start=FILE:{tmp_path / 'prompt.txt'}"])
    assert "is not UTF-8 text" in message and "prompt.txt" in message
    message = one_line_error(capsys, "sample", [*sample_args(char_run), f"--start=FILE:{tmp_path}"])
    assert "is a directory" in message


# ---------------------------------------------------------------------------- GPT-2 directories and the hub

def gpt2_dir(tmp_path, config, weights_header=None):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if weights_header is not None:
        header = json.dumps(weights_header).encode()
        (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    return folder


TINY_GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 8, "vocab_size": 16}


@pytest.mark.parametrize("config, expected", [
    ({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1}, "describes a 'llama' model"),
    ({k: v for k, v in TINY_GPT2.items() if k != "n_layer"}, "lacks GPT-2's integer key(s) n_layer"),
])
def test_config_json_that_is_not_gpt2(tmp_path, capsys, config, expected):
    folder = gpt2_dir(tmp_path, config)
    assert expected in one_line_error(capsys, "sample", [f"--init_from={folder}", "--device=cpu"])


def test_unknown_safetensors_dtype(tmp_path, capsys):
    folder = gpt2_dir(tmp_path, TINY_GPT2, {"wte.weight": {"dtype": "F8_E4M3", "shape": [16, 8], "data_offsets": [0, 64]}})
    message = one_line_error(capsys, "sample", [f"--init_from={folder}", "--device=cpu"])
    assert "dtype 'F8_E4M3'" in message and "BF16" in message
    with pytest.raises(PretrainedError, match="F8_E4M3"):
        read_safetensors(str(folder / "model.safetensors"))


def test_weights_that_do_not_fit_the_config(tmp_path):
    folder = gpt2_dir(tmp_path, TINY_GPT2, {"wte.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}})
    with pytest.raises(PretrainedError, match="do not fit its config.json"):
        from_pretrained(str(folder))


def test_truncated_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes((10**6).to_bytes(8, "little") + b'{"a": ')
    with pytest.raises(PretrainedError, match="is not a safetensors file"):
        read_safetensors(str(tmp_path / "model.safetensors"))


def test_hub_download_offline_is_one_line(tmp_path):
    # an empty hub cache with HF_HUB_OFFLINE=1: the download fails at once, as it would without a network
    result = run_python("import sys; from nanogpt_ray.cli import main; sys.exit(main(['sample', '--init_from=gpt2', "
                        "'--device=cpu']))", tmp_path, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot download 'gpt2'" in lines[0] and "local directory" in lines[0]


def test_hub_download_without_huggingface_hub_names_the_extra(tmp_path):
    result = run_python("import sys; sys.modules['huggingface_hub'] = None\nfrom nanogpt_ray.cli import main\n"
                        "sys.exit(main(['sample', '--init_from=gpt2', '--device=cpu']))", tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "nanogpt-ray[hf]" in lines[0] and "local directory" in lines[0]


# ---------------------------------------------------------------------------- optional extras

def test_export_without_transformers_names_the_extra_and_writes_nothing(char_run, tmp_path):
    hf_dir = tmp_path / "hf"
    result = run_python("import sys; sys.modules['transformers'] = None\nfrom nanogpt_ray.cli import main\n"
                        f"sys.exit(main(['export', '--out_dir={char_run['out_dir']}', '--hf_dir={hf_dir}']))", tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nanogpt-ray export: error:") and "pip install 'nanogpt-ray[hf]'" in lines[0]
    assert not hf_dir.exists()


def test_export_to_a_path_that_is_a_file_is_one_line_and_keeps_the_file(capsys, char_run, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    line = one_line_error(capsys, "export", [f"--out_dir={char_run['out_dir']}", f"--hf_dir={target}"])
    assert f"--hf_dir={target} is a file" in line and "directory" in line
    assert target.read_text() == "mine"


def test_plots_without_matplotlib_name_the_extra(tmp_path):
    result = run_python("import sys; sys.modules['matplotlib'] = None\n"
                        "from nanogpt_ray.sweep_results import plot_lr_sweep\n"
                        f"plot_lr_sweep([], {str(tmp_path / 'lr.png')!r})", tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nanogpt_ray.config.MissingExtraError:") and "pip install 'nanogpt-ray[plots]'" in last
    assert not (tmp_path / "lr.png").exists()


def test_missing_extra_is_a_user_error():
    assert issubclass(MissingExtraError, UserError)


# ---------------------------------------------------------------------------- devices

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_on_a_machine_without_it(char_run, capsys):
    message = one_line_error(capsys, "sample", [*sample_args(char_run)[:-3], "--device=cuda", "--max_new_tokens=2"])
    assert "device='cuda'" in message and "no CUDA GPU" in message
    with pytest.raises(DeviceError, match="use device='cpu' or 'auto'"):
        resolve_device("cuda:0")
    assert issubclass(DeviceError, UserError)


def test_cuda_on_a_cluster_without_gpus_fails_preflight():
    nodes = [{"Resources": {"CPU": 4.0}}]
    with pytest.raises(LaunchError, match="device='cuda' but the Ray cluster has no GPUs"):
        check_placement(TrainConfig(device="cuda", num_workers=1), nodes)
    assert check_placement(TrainConfig(device="cpu", num_workers=1), nodes)[1] is False


def test_cluster_mode_with_nothing_at_the_address_fails_in_one_line():
    t0 = time.time()
    result = subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", "bench", "--cluster=True",
                             "--address=127.0.0.1:1", "--device=cpu", "--real_data=False"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=100,
                            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "127.0.0.1:1" in lines[0] and "no Ray cluster" in lines[0]
    assert time.time() - t0 < 90


# ---------------------------------------------------------------------------- train: refused before Ray starts

@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    make_dataset(root)
    return root


def train_error(capsys, data_root, out_dir, *flags) -> str:
    cfg = tiny_config(data_root, out_dir)
    return one_line_error(capsys, "train", [*(f"--{k}={v}" for k, v in cfg.items()), *flags])


def test_accumulation_not_divisible_by_workers_is_one_line(capsys, toy_data, tmp_path):
    err = train_error(capsys, toy_data, tmp_path, "--gradient_accumulation_steps=3", "--num_workers=2")
    assert "gradient_accumulation_steps=3 must divide by num_workers=2" in err


def test_missing_dataset_names_the_prepare_command(capsys, toy_data, tmp_path):
    err = train_error(capsys, toy_data, tmp_path, "--dataset=nowhere")
    assert "nanogpt-ray prepare nowhere" in err


def test_block_size_larger_than_the_data_is_one_line(capsys, tmp_path):
    make_dataset(tmp_path / "small", n_train=20_000, n_val=100)
    err = train_error(capsys, tmp_path / "small", tmp_path / "out", "--block_size=128")
    assert "val.bin holds 100 tokens, too few for block_size=128" in err


def test_unwritable_storage_path_fails_before_workers_start(capsys, toy_data, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    err = train_error(capsys, toy_data, tmp_path / "out", f"--storage_path={tmp_path / 'a_file' / 'ray'}")
    assert "is not writable" in err and "--storage_path" in err


def test_resume_without_a_checkpoint_is_one_line(capsys, toy_data, tmp_path):
    err = train_error(capsys, toy_data, tmp_path / "empty", "--init_from=resume")
    assert "init_from='resume' but there is no checkpoint" in err
