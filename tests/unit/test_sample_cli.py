"""`nanogpt-ray sample` and `export` end to end on a tiny untrained model: nothing is trained, the
checkpoint and its dataset's meta.json are written by the test. Sampling uses top_k=1 (greedy) where the
text is compared, so the expected tokens come from a plain argmax loop over the same weights."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from nanogpt_ray import cli
from nanogpt_ray.checkpoint import save_checkpoint
from nanogpt_ray.config import SampleConfig, SamplingParams
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.sample import (
    SEPARATOR,
    SampleError,
    decode_tokens,
    encode_prompt,
    generate_ids,
    load_sampler,
    read_start,
    resolve_tokenizer,
)
from nanogpt_ray.tokenizer import CharTokenizer, GPT2Tokenizer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nAy me!\n"
BLOCK_SIZE = 32


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """out_dir/ckpt.pt of a random 2-layer model, trained on nothing, over data_root/tiny_char/meta.json."""
    root = tmp_path_factory.mktemp("run")
    tok = CharTokenizer.from_text(TEXT)
    data_root = root / "data"
    (data_root / "tiny_char").mkdir(parents=True)
    (data_root / "tiny_char" / "meta.json").write_text(json.dumps(tok.meta()))
    torch.manual_seed(0)
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK_SIZE, bias=False, vocab_size=tok.vocab_size, dropout=0.0)
    model = GPT(GPTConfig(**model_args))
    with torch.no_grad():  # sharper logits than the init, so greedy choices are far from ties
        for p in model.parameters():
            p.mul_(20.0)
    ckpt = {"model": model.state_dict(), "optimizer": {}, "model_args": model_args, "iter_num": 0,
            "best_val_loss": 1e9, "config": {"dataset": "tiny_char", "data_root": str(data_root)}}
    out_dir = root / "out"
    save_checkpoint(ckpt, str(out_dir / "ckpt.pt"))
    return dict(out_dir=out_dir, data_root=data_root, model=model.eval(), tok=tok, root=root)


def greedy(model, ids, n):
    """The argmax continuation, recomputing the full (cropped) context each step: nanoGPT's way."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx[:, -model.config.block_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0].tolist()


def run_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def split_samples(stdout):
    assert stdout.endswith(SEPARATOR + "\n"), stdout[-200:]
    parts = stdout.split("\n" + SEPARATOR + "\n")
    assert parts[-1] == ""
    return parts[:-1]


# ---------------------------------------------------------------------------- the command line

def test_sample_subprocess_prints_greedy_samples_of_the_checkpoint(char_run, tmp_path):
    result = run_cli("sample", f"--out_dir={char_run['out_dir']}", "--num_samples=2", "--max_new_tokens=20",
                     "--device=cpu", "--start=ROMEO:", "--top_k=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    samples = split_samples(result.stdout)
    tok = char_run["tok"]
    expected = tok.decode(greedy(char_run["model"], tok.encode("ROMEO:"), 20))
    assert samples == [expected, expected]
    assert len(expected) == len("ROMEO:") + 20


def test_sample_from_prompt_file_longer_than_block_size(char_run, tmp_path, capsys):
    prompt = (TEXT * 2)[: BLOCK_SIZE + 17]  # generate() crops the context to the last block_size tokens
    (tmp_path / "prompt.txt").write_text(prompt)
    code = cli.main(["sample", f"--out_dir={char_run['out_dir']}", f"--start=FILE:{tmp_path / 'prompt.txt'}",
                     "--num_samples=3", "--max_new_tokens=12", "--device=cpu", "--top_k=1", "--batch_size=2"])
    assert code == 0
    samples = split_samples(capsys.readouterr().out)
    tok = char_run["tok"]
    expected = tok.decode(greedy(char_run["model"], tok.encode(prompt), 12))
    assert samples == [expected] * 3
    assert samples[0].startswith(prompt)


def test_random_samples_follow_the_seed_and_not_the_batching(char_run):
    cfg = SampleConfig(out_dir=str(char_run["out_dir"]), device="cpu", temperature=1.5, top_k=None)
    sampler = load_sampler(cfg)
    ids = encode_prompt(sampler.tokenizer, "JULIET:")
    four = list(generate_ids(sampler, ids, 4, SamplingParams(16, 1.5, None, None, seed=7), batch_size=4))
    one_by_one = list(generate_ids(sampler, ids, 4, SamplingParams(16, 1.5, None, None, seed=7), batch_size=1))
    assert four == one_by_one
    assert len({tuple(s) for s in four}) > 1  # different rows, different samples
    other_seed = list(generate_ids(sampler, ids, 4, SamplingParams(16, 1.5, None, None, seed=8), batch_size=4))
    assert other_seed != four


def test_subprocess_bad_input_is_one_line_exit_2(tmp_path):
    result = run_cli("sample", f"--out_dir={tmp_path / 'no_such_run'}", "--device=cpu", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no checkpoint" in lines[0] and "no_such_run" in lines[0]
    assert result.stdout == ""


def _not_ours(run, tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"definitely not a checkpoint")
    return [f"--out_dir={tmp_path}"]


def _state_dict_only(run, tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "ckpt.pt")
    return [f"--out_dir={tmp_path}"]


BAD_INPUTS = {
    "missing_out_dir": (lambda run, tmp: [f"--out_dir={tmp / 'nope'}"], "no checkpoint"),
    "empty_out_dir": (lambda run, tmp: [f"--out_dir={tmp}"], "no checkpoint"),
    "checkpoint_not_ours": (_not_ours, "weights_only"),
    "checkpoint_without_our_keys": (_state_dict_only, "model_args"),
    "unknown_characters": (lambda run, tmp: [f"--out_dir={run['out_dir']}", "--start=ROMEO: 42 ~"], "3 character(s) outside the model's 36-character vocabulary: '2', '4', '~'"),
    "missing_prompt_file": (lambda run, tmp: [f"--out_dir={run['out_dir']}", f"--start=FILE:{tmp / 'gone.txt'}"], "gone.txt"),
    "temperature_zero": (lambda run, tmp: [f"--out_dir={run['out_dir']}", "--temperature=0"], "temperature=0"),
    "temperature_negative": (lambda run, tmp: [f"--out_dir={run['out_dir']}", "--temperature=-1.0"], "temperature"),
    "top_k_zero": (lambda run, tmp: [f"--out_dir={run['out_dir']}", "--top_k=0"], "top_k=0"),
    "unknown_init_from": (lambda run, tmp: ["--init_from=gpt3"], "init_from='gpt3'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_exit_2(case, char_run, tmp_path, capsys):
    make_args, expected = BAD_INPUTS[case]
    code = cli.main(["sample", *make_args(char_run, tmp_path), "--device=cpu", "--max_new_tokens=3", "--num_samples=1"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("nanogpt-ray sample: error:")
    assert expected in lines[0]
    assert out == ""


# ---------------------------------------------------------------------------- tokenizer lookup

def test_tokenizer_falls_back_to_this_commands_data_root(char_run, tmp_path):
    ckpt = {"model_args": {"vocab_size": char_run["tok"].vocab_size},
            "config": {"dataset": "tiny_char", "data_root": str(tmp_path / "moved_away")}}
    tok = resolve_tokenizer(ckpt, "resume", str(char_run["data_root"]))
    assert isinstance(tok, CharTokenizer) and tok.chars == char_run["tok"].chars
    # a nanoGPT checkpoint has no data_root: this command's data_root is used
    del ckpt["config"]["data_root"]
    assert resolve_tokenizer(ckpt, "resume", str(char_run["data_root"])).chars == char_run["tok"].chars


def test_no_meta_and_a_small_vocab_is_an_error_not_gpt2(tmp_path):
    ckpt = {"model_args": {"vocab_size": 65}, "config": {"dataset": "shakespeare_char"}}
    with pytest.raises(SampleError, match="shakespeare_char"):
        resolve_tokenizer(ckpt, "resume", str(tmp_path))
    ckpt["model_args"]["vocab_size"] = 50304  # nanoGPT's padded GPT-2 vocab: BPE, as nanoGPT assumes
    assert isinstance(resolve_tokenizer(ckpt, "resume", str(tmp_path)), GPT2Tokenizer)


def test_prompt_helpers(tmp_path):
    (tmp_path / "p.txt").write_text("hi there")
    assert read_start(f"FILE:{tmp_path / 'p.txt'}") == "hi there"
    assert read_start("FILE is not a prefix here") == "FILE is not a prefix here"
    gpt2 = GPT2Tokenizer()
    assert encode_prompt(gpt2, "") == [50256]  # an empty prompt starts a new document
    assert decode_tokens(gpt2, [15496, 995, 50300]) == "Hello world"  # padded-vocab ids are dropped
    with pytest.raises(SampleError, match="empty"):
        encode_prompt(CharTokenizer("ab"), "")


# ---------------------------------------------------------------------------- export and GPT-2 weights

def test_export_command_writes_a_directory_transformers_loads(char_run, tmp_path):
    from transformers import GPT2LMHeadModel

    script = pathlib.Path(sys.executable).parent / "nanogpt-ray"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "nanogpt_ray.cli"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    hf_dir = tmp_path / "hf"
    result = subprocess.run([*command, "export", f"--out_dir={char_run['out_dir']}", f"--hf_dir={hf_dir}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(hf_dir) in result.stdout
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    idx = torch.tensor([char_run["tok"].encode("ROMEO:\nBut soft")])
    with torch.no_grad():
        ours, _ = char_run["model"](idx, targets=torch.zeros_like(idx))
        assert (hf(idx).logits - ours).abs().max() <= 1e-4  # weights scaled x20: logits in the hundreds


def test_sample_from_a_local_gpt2_directory_with_offline_bpe(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    code = cli.main(["sample", f"--init_from={tmp_path / 'gpt2-tiny'}", "--start=Hello world", "--num_samples=1",
                     "--max_new_tokens=8", "--top_k=1", "--device=cpu"])
    assert code == 0
    [sample] = split_samples(capsys.readouterr().out)
    with torch.no_grad():
        expected = hf.generate(torch.tensor([[15496, 995]]), max_new_tokens=8, do_sample=False, pad_token_id=50256)
    assert sample == GPT2Tokenizer().decode(expected[0].tolist())
    assert sample.startswith("Hello world")


@pytest.mark.timeout(300)
def test_sample_with_compile_runs_the_compiled_model_and_matches_eager(char_run):
    # generation goes through the compiled module (engine.generate calls the model it is given), so
    # --compile=True speeds up what really runs; the tokens stay those of the eager model
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    sampler = load_sampler(SampleConfig(out_dir=str(char_run["out_dir"]), device="cpu", compile=True))
    assert isinstance(sampler.model, torch._dynamo.eval_frame.OptimizedModule)
    tok = char_run["tok"]
    ids = encode_prompt(sampler.tokenizer, "ROMEO:")
    [compiled] = generate_ids(sampler, ids, 1, SamplingParams(6, top_k=1), batch_size=1)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured (and compiled) the forward passes
    assert compiled == greedy(char_run["model"], tok.encode("ROMEO:"), 6)
