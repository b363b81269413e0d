"""Hugging Face GPT-2 both ways: a save_pretrained directory loads into our GPT, and export_hf writes a
directory transformers loads; the logits agree to 1e-5 in float32 (randomly initialised, no downloads)."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt_ray.hf import export_hf, from_pretrained
from nanogpt_ray.model import GPT, GPTConfig

TOL = 1e-5


def random_hf_model(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger than the init so every path (biases, GELU's curve) matters in the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def our_random_model(bias, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=32, vocab_size=101, n_layer=2, n_head=4, n_embd=32, bias=bias, gelu="tanh")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def full_logits(model, idx):
    """Logits of every position from our model (targets make it compute them all)."""
    logits, _ = model(idx, targets=torch.zeros_like(idx))
    return logits


@torch.no_grad()
def test_from_pretrained_directory_matches_transformers_logits(tmp_path):
    hf = random_hf_model()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = from_pretrained(str(tmp_path)).eval()
    assert ours.config.vocab_size == 101 and ours.config.block_size == 32 and ours.config.n_layer == 2
    idx = torch.randint(0, 101, (3, 32))
    expected = hf(idx).logits
    assert (full_logits(ours, idx) - expected).abs().max() <= TOL
    assert (ours(idx)[0][:, -1] - expected[:, -1]).abs().max() <= TOL  # the inference path too
    assert expected.abs().max() > 1.0  # logits big enough that a wrong mapping could not hide under TOL


@torch.no_grad()
@pytest.mark.parametrize("bias", [True, False])
def test_export_hf_loads_in_transformers_with_equal_logits(tmp_path, bias):
    ours = our_random_model(bias)
    export_hf(ours, str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes  # readable like the rest, not 0600
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["n_positions"] == 32 and config["vocab_size"] == 101
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 101, (3, 32))
    assert (hf(idx).logits - full_logits(ours, idx)).abs().max() <= TOL
    assert hf.config.activation_function == "gelu_new"  # the tanh GELU our MLP uses
    # and back again: our loader reads what we exported
    back = from_pretrained(str(tmp_path / "hf")).eval()
    assert (full_logits(back, idx) - full_logits(ours, idx)).abs().max() <= TOL
