"""`nanogpt-ray export` writes a complete Hugging Face directory: weights, config with the right special
token ids and GELU, generation_config.json and the tokenizer. transformers.pipeline then runs it offline
with no code of ours, and its greedy text equals `nanogpt-ray sample --top_k=1`. Random weights, real
transformers and tiktoken, nothing downloaded."""

import json
import logging
import math

import torch
import transformers
from torch.nn import functional as F

from nanogpt_ray import cli
from nanogpt_ray.checkpoint import load_model, save_checkpoint
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.sample import SEPARATOR
from nanogpt_ray.tokenizer import CharTokenizer, GPT2Tokenizer

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nAy me!\n"
PROMPT = "ROMEO:\nBut"
NEW_TOKENS = 16


def write_run(root, vocab_size, dataset, model_args_extra=None, scale=20.0, seed=0):
    """out/ckpt.pt of a random 2-layer model in nanoGPT's checkpoint layout (model_args without 'gelu')."""
    torch.manual_seed(seed)
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=48, bias=False, vocab_size=vocab_size,
                      dropout=0.0, **(model_args_extra or {}))
    model = GPT(GPTConfig(**model_args))
    with torch.no_grad():  # sharper logits than the init, so greedy choices are far from ties
        for p in model.parameters():
            p.mul_(scale)
    ckpt = {"model": model.state_dict(), "optimizer": {}, "model_args": model_args, "iter_num": 0,
            "best_val_loss": 1e9, "config": {"dataset": dataset, "data_root": str(root / "data")}}
    save_checkpoint(ckpt, str(root / "out" / "ckpt.pt"))
    return root / "out"


def our_greedy_sample(out_dir, data_root, capsys):
    code = cli.main(["sample", f"--out_dir={out_dir}", f"--data_root={data_root}", f"--start={PROMPT}",
                     "--num_samples=1", f"--max_new_tokens={NEW_TOKENS}", "--top_k=1", "--device=cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.endswith("\n" + SEPARATOR + "\n")
    return out[: -len(SEPARATOR) - 2]


def export_and_generate(out_dir, data_root, hf_dir, capsys, caplog, recwarn):
    """Export with the CLI, then greedy-generate through transformers.pipeline, catching every warning
    and every transformers log line of WARNING or above on the way."""
    transformers.logging.enable_propagation()  # transformers logs to its own handler; let caplog see it
    try:
        with caplog.at_level(logging.WARNING):
            assert cli.main(["export", f"--out_dir={out_dir}", f"--data_root={data_root}", f"--hf_dir={hf_dir}"]) == 0
            assert str(hf_dir) in capsys.readouterr().out
            pipe = transformers.pipeline("text-generation", model=str(hf_dir), device="cpu")
            [result] = pipe(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
    finally:
        transformers.logging.disable_propagation()
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    noisy += [str(w.message) for w in recwarn]
    return result["generated_text"], noisy


def test_char_model_exports_a_directory_pipeline_generates_like_ours(tmp_path, capsys, caplog, recwarn):
    tok = CharTokenizer.from_text(TEXT)
    (tmp_path / "data" / "tiny_char").mkdir(parents=True)
    (tmp_path / "data" / "tiny_char" / "meta.json").write_text(json.dumps(tok.meta()))
    out_dir = write_run(tmp_path, tok.vocab_size, "tiny_char")
    hf_dir = tmp_path / "hf"

    text, noisy = export_and_generate(out_dir, tmp_path / "data", hf_dir, capsys, caplog, recwarn)
    ours = our_greedy_sample(out_dir, tmp_path / "data", capsys)
    assert text == ours and text.startswith(PROMPT) and len(text) == len(PROMPT) + NEW_TOKENS
    assert noisy == [], noisy  # no "pad_token_id"/"eos_token_id" warnings, nothing else either

    config = json.loads((hf_dir / "config.json").read_text())
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    # a 30-character vocabulary has no end-of-text token: GPT-2's 50256 would point past it
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert config.get(key) is None and generation.get(key) is None, key
    assert config["activation_function"] == "gelu"  # nanoGPT's exact GELU
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tok(TEXT).input_ids == tok.encode(TEXT)  # exactly our characters, newlines included
    assert hf_tok.decode(tok.encode(TEXT)) == TEXT


def test_gpt2_bpe_model_exports_a_tokenizer_built_offline_from_tiktoken_ranks(tmp_path, capsys, caplog, recwarn):
    tok = GPT2Tokenizer()
    (tmp_path / "data").mkdir()
    out_dir = write_run(tmp_path, tok.vocab_size, "openwebtext", scale=5.0)  # no meta: GPT-2 BPE
    hf_dir = tmp_path / "hf"

    text, noisy = export_and_generate(out_dir, tmp_path / "data", hf_dir, capsys, caplog, recwarn)
    ours = our_greedy_sample(out_dir, tmp_path / "data", capsys)
    assert text == ours and text.startswith(PROMPT) and len(text) > len(PROMPT)
    assert noisy == [], noisy

    config = json.loads((hf_dir / "config.json").read_text())
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert config[key] == generation[key] == 50256, key
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    sample = "Hello world, it's 2024!\n\n  Ünïcode — 東京 and  spaces\tend"
    assert hf_tok(sample).input_ids == tok.encode(sample)
    assert hf_tok.decode(tok.encode(sample)) == sample
    assert hf_tok.convert_tokens_to_ids("<|endoftext|>") == 50256


# ------------------------------------------------------------------ nanoGPT's forward pass, from scratch

def nanogpt_forward(sd, idx, n_layer, n_head, gelu):
    """nanoGPT's model.py forward written out with torch functions, from its state dict's own names."""
    def ln(x, prefix):
        return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd.get(prefix + ".bias"), 1e-5)

    def linear(x, prefix):
        return F.linear(x, sd[prefix + ".weight"], sd.get(prefix + ".bias"))

    B, T = idx.shape
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    C = x.shape[-1]
    hs = C // n_head
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(n_layer):
        p = f"transformer.h.{i}"
        q, k, v = linear(ln(x, p + ".ln_1"), p + ".attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, hs).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, p + ".attn.c_proj")
        h = linear(ln(x, p + ".ln_2"), p + ".mlp.c_fc")
        h = F.gelu(h) if gelu == "exact" else F.gelu(h, approximate="tanh")
        x = x + linear(h, p + ".mlp.c_proj")
    return ln(x, "transformer.ln_f") @ sd["transformer.wte.weight"].T  # lm_head is tied to wte


@torch.no_grad()
def test_nanogpt_checkpoint_logits_equal_nanogpts_forward_with_exact_gelu(tmp_path):
    torch.set_default_dtype(torch.float64)  # so 1e-6 measures the formula, not float32 rounding
    try:
        out_dir = write_run(tmp_path, 65, "shakespeare_char", scale=3.0)
        ckpt = torch.load(out_dir / "ckpt.pt", weights_only=True)
        assert "gelu" not in ckpt["model_args"]  # nanoGPT's layout
        # nanoGPT saves torch.compile'd models with the _orig_mod. prefix; loading strips it
        ckpt["model"] = {"_orig_mod." + k: v for k, v in ckpt["model"].items()}
        torch.save(ckpt, out_dir / "ckpt.pt")
        model, _ = load_model("resume", str(out_dir))
        assert model.config.gelu == "exact"
        sd = {k: v.double() for k, v in model.state_dict().items()}
        model = model.double()
        idx = torch.randint(0, 65, (2, 48))
        ours, _ = model(idx, targets=torch.zeros_like(idx))
        expected = nanogpt_forward(sd, idx, 2, 2, "exact")
        assert (ours - expected).abs().max() <= 1e-6
        # and the test can tell the two GELUs apart
        assert (ours - nanogpt_forward(sd, idx, 2, 2, "tanh")).abs().max() > 1e-4
    finally:
        torch.set_default_dtype(torch.float32)
