"""nanoGPT reads our checkpoints and we read nanoGPT's: the contract in tests/nanogpt_contract.py, checked on the
ckpt.pt of every writer that runs in one process (DDP and FSDP over gloo: test_fsdp.py; Ray Train workers:
tests/integration/test_train_ray.py)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt_ray.checkpoint import CKPT_NAME, load_model, model_from_checkpoint, save_checkpoint
from nanogpt_ray.config import ConfigError, GPTConfig
from nanogpt_ray.model import GPT
from nanogpt_ray.train_loop import run_bare
from tests.nanogpt_contract import NANOGPT_GPTCONFIG_KEYS, assert_nanogpt_reads, nanogpt_state_dict_shapes
from tests.train_data import make_dataset, tiny_config

# a few iterations, one checkpoint at the end: all a writer needs to show its layout
SHORT = dict(max_iters=2, eval_interval=2, log_interval=1, eval_iters=1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root)
    return root


def openai_style_directory(path):
    """A tiny GPT-2 saved as Hugging Face does OpenAI's (tanh GELU, biases), so finetuning needs no download."""
    GPT2LMHeadModel(GPT2Config(vocab_size=65, n_positions=32, n_embd=32, n_layer=2, n_head=2)).save_pretrained(path)
    return str(path)


WRITERS = {
    "adamw, bias": dict(bias=True),
    "adamw, no bias": dict(bias=False),
    "muon": dict(optimizer="muon"),
    "finetuned OpenAI weights (tanh GELU)": dict(init_from="openai"),
    "modern": dict(arch="modern", optimizer="muon"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("writer", WRITERS)
def test_nanogpt_reads_the_checkpoint_of_every_one_process_writer(writer, data_root, tmp_path):
    overrides = dict(WRITERS[writer])
    if overrides.get("init_from") == "openai":
        overrides["init_from"] = openai_style_directory(tmp_path / "gpt2")
    run_bare(tiny_config(data_root, tmp_path / "out", **SHORT, **overrides))
    ckpt = torch.load(tmp_path / "out" / CKPT_NAME, weights_only=True)
    ours = model_from_checkpoint(ckpt)
    extras = ckpt["model_extras"]
    assert extras == {"gelu": ours.config.gelu, "arch": ours.config.arch}
    if writer == "modern":
        # nanoGPT builds its config, then fails loudly at the state dict (no position table, no gains)
        assert set(ckpt["model_args"]) == NANOGPT_GPTCONFIG_KEYS and extras["arch"] == "modern"
        assert {k: tuple(v.shape) for k, v in ckpt["model"].items()} != nanogpt_state_dict_shapes(ckpt["model_args"])
        return
    assert_nanogpt_reads(ckpt, resumable=overrides.get("optimizer") != "muon")  # nanoGPT's resume is AdamW's
    if writer.startswith("finetuned"):
        assert extras["gelu"] == "tanh" and ckpt["model_args"]["bias"] is True


def test_our_older_checkpoints_and_nanogpts_load_with_the_right_model(tmp_path):
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, bias=False, vocab_size=11, dropout=0.0)
    layouts = {
        "nanogpt": ({**args}, None, "exact", "gpt2"),  # no options of ours: nanoGPT's model
        "ours, older": ({**args, "gelu": "tanh", "arch": "gpt2"}, None, "tanh", "gpt2"),
        "ours": ({**args}, {"gelu": "tanh", "arch": "gpt2"}, "tanh", "gpt2"),
    }
    for name, (model_args, extras, gelu, arch) in layouts.items():
        model = GPT(GPTConfig(**{**model_args, **(extras or {})}))
        ckpt = {"model": model.state_dict(), "model_args": model_args, "iter_num": 0, "best_val_loss": 1.0}
        if extras is not None:
            ckpt["model_extras"] = extras
        (tmp_path / name).mkdir()
        save_checkpoint(ckpt, str(tmp_path / name / CKPT_NAME))
        loaded, _ = load_model("resume", str(tmp_path / name))
        assert (loaded.config.gelu, loaded.config.arch) == (gelu, arch), name


def test_bias_with_the_modern_arch_is_refused_wherever_a_model_is_configured():
    with pytest.raises(ConfigError, match="bias=True does not go with arch='modern'"):
        GPTConfig(arch="modern", bias=True)
    with pytest.raises(ConfigError, match="bias=True does not go with arch='modern'"):
        GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, arch="modern", bias=True))
