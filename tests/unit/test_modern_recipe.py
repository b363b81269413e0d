"""The opt-in modern recipe (arch='modern', optimizer='muon'), without Ray: the rotary KV cache inside and past
the context, Muon's parameter groups, exact resume, DDP on a real 2-process gloo group, sampling, bench, export.

Past the context, "consistent" means: the engine's sliding cache computes each token once with the block_size
tokens before it in view, which is exactly a full forward over the whole text with a banded causal mask of
width block_size (rotary positions have no table, so the model can run that long sequence without a cache)."""

import json
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from nanogpt_ray import cli, engine
from nanogpt_ray.bench import run_bench
from nanogpt_ray.checkpoint import CKPT_NAME, load_model
from nanogpt_ray.config import BenchConfig, ConfigError, TrainConfig, UserError, from_dict
from nanogpt_ray.hf import export_hf
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.modern import ModernGPT, build_gpt
from nanogpt_ray.muon import Muon, Optimizers
from nanogpt_ray.train_loop import run_bare
from tests.train_data import make_dataset, tiny_config

BLOCK = 16


def modern_model(block_size=BLOCK, seed=0):
    """A random modern model with weights far from its zero init, so greedy choices are far from ties."""
    torch.manual_seed(seed)
    model = build_gpt(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=65, arch="modern"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def banded_greedy(model, ids, n, window):
    """Reference past the context: each step a full forward of the whole text, each query seeing the `window`
    keys up to itself; greedy."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            T = idx.size(1)
            q, k = torch.arange(T).unsqueeze(1), torch.arange(T).unsqueeze(0)
            band = (k <= q) & (k > q - window)
            logits, _ = model(idx, attn_mask=band)
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0].tolist()


# ---------------------------------------------------------------------------- the model

def test_modern_flavour_has_rotary_no_biases_untied_zero_head_and_gpt2_stays_nanogpt():
    modern = build_gpt(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=65, arch="modern"))
    names = dict(modern.named_parameters())
    assert "transformer.wpe.weight" not in names and not any(n.endswith(".bias") for n in names)
    assert not any("ln_" in n for n in names)  # parameter-free RMSNorm
    assert modern.lm_head.weight.data_ptr() != modern.transformer.wte.weight.data_ptr()
    assert torch.count_nonzero(modern.lm_head.weight) == 0
    assert all(torch.count_nonzero(p) == 0 for n, p in names.items() if n.endswith("c_proj.weight"))
    logits, loss = modern(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    assert torch.count_nonzero(logits) == 0 and loss.item() == pytest.approx(torch.log(torch.tensor(65.0)).item())
    sharp = modern_model()
    logits, _ = sharp(torch.randint(65, (2, BLOCK)), torch.randint(65, (2, BLOCK)))
    assert logits.abs().max() <= 15.0  # the tanh soft-cap
    gpt2 = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=65))
    assert "transformer.wpe.weight" in dict(gpt2.named_parameters())
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight


def test_build_gpt_picks_the_model_and_nanogpts_gpt_refuses_the_modern_config():
    config = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11)
    assert type(build_gpt(GPTConfig(**config))) is GPT
    assert type(build_gpt(GPTConfig(**config, arch="modern"))) is ModernGPT
    with pytest.raises(AssertionError, match="build_gpt"):  # never a nanoGPT model silently built for a modern config
        GPT(GPTConfig(**config, arch="modern"))

def test_crop_block_size_of_a_modern_model_shortens_the_context():
    model = modern_model(block_size=32)
    ids = torch.randint(65, (1, 10))
    before, _ = model(ids)
    model.crop_block_size(12)
    after, _ = model(ids)
    assert model.config.block_size == 12 and torch.equal(before, after)
    with pytest.raises(AssertionError, match="block size is only 12"):  # a cache holds block_size positions
        model(torch.randint(65, (1, 13)), kv_cache=engine.KVCache.for_model(model, 1, "cpu"))


# ---------------------------------------------------------------------------- the rotary KV cache

def test_rotary_cache_greedy_equals_full_recomputation_within_the_context():
    model = modern_model()
    prompt = torch.randint(65, (1, 5), generator=torch.Generator().manual_seed(1))
    n = BLOCK - 5
    cached = engine.generate(model, prompt, n, top_k=1)
    recomputed = engine.generate(model, prompt, n, top_k=1, use_cache=False)
    reference = model.generate(prompt, n, top_k=1)  # nanoGPT's loop: a full forward per token
    assert torch.equal(cached, recomputed) and torch.equal(cached, reference)
    assert len(set(cached[0, 5:].tolist())) > 2  # a real continuation, not one repeated token


def test_rotary_cache_slides_past_the_context_without_refilling_and_matches_banded_attention(monkeypatch):
    model = modern_model()
    built = []
    for_model = engine.KVCache.for_model
    monkeypatch.setattr(engine.KVCache, "for_model", classmethod(lambda cls, *a: built.append(1) or for_model(*a)))
    prompt = [3, 14, 15, 9, 26]
    n = 3 * BLOCK  # well past the context
    out = engine.generate(model, torch.tensor([prompt]), n, top_k=1)[0].tolist()
    assert len(built) == 1  # one prefill; past the window the cache drops its oldest entry each step
    assert out == banded_greedy(model, prompt, n, BLOCK)
    # and it is not nanoGPT's re-prefilled window (which sees older tokens as if the text began there)
    assert out != model.generate(torch.tensor([prompt]), n, top_k=1)[0].tolist()


def test_ragged_rows_slide_past_the_context_as_each_would_alone():
    model = modern_model()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 2]]
    n = 2 * BLOCK
    width = max(map(len, prompts))
    idx = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    out = engine.generate(model, idx, n, top_k=1, prompt_lengths=[len(p) for p in prompts])
    for row, p in enumerate(prompts):
        alone = engine.generate(model, torch.tensor([p]), n, top_k=1)[0].tolist()
        assert out[row, width - len(p):].tolist() == alone


# ---------------------------------------------------------------------------- Muon

def test_muon_groups_hold_exactly_the_2d_block_weights():
    for arch, bias in (("modern", False), ("gpt2", True)):
        model = build_gpt(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=65, arch=arch, bias=bias))
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", optimizer="muon", muon_lr=0.05)
        assert isinstance(opt, Optimizers)
        muon, adamw = opt.optimizers
        assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
        blocks_2d = {id(p) for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
        muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
        adamw_ids = {id(p) for g in adamw.param_groups for p in g["params"]}
        assert muon_ids == blocks_2d and len(blocks_2d) == 8
        assert muon_ids | adamw_ids == {id(p) for p in model.parameters()} and not muon_ids & adamw_ids
        assert [g["lr_ratio"] for g in muon.param_groups] == [50.0]  # the schedule moves muon_lr with learning_rate


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root)
    return root


MODERN = dict(arch="modern", optimizer="muon", muon_lr=0.05)


def _run(data_root, out_dir, **overrides):
    return run_bare(from_dict(TrainConfig, tiny_config(data_root, out_dir, **dict(MODERN, **overrides))))


@pytest.mark.timeout(180)
def test_modern_muon_resumes_bit_for_bit(data_root, tmp_path):
    full = _run(data_root, tmp_path / "full", max_iters=20)
    _run(data_root, tmp_path / "half", max_iters=10)
    _run(data_root, tmp_path / "half", max_iters=20, init_from="resume")
    a = torch.load(tmp_path / "full" / CKPT_NAME, weights_only=True)
    b = torch.load(tmp_path / "half" / CKPT_NAME, weights_only=True)
    assert a["model_extras"]["arch"] == "modern" and b["iter_num"] == 20
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    muon_state, _ = b["optimizer"]["optimizers"]
    assert all(torch.equal(s["momentum_buffer"], a["optimizer"]["optimizers"][0]["state"][i]["momentum_buffer"])
               for i, s in muon_state["state"].items())
    # both optimizers follow the schedule, muon_lr / learning_rate apart
    muon_lr, adamw_lr = (opt["param_groups"][0]["lr"] for opt in b["optimizer"]["optimizers"])
    assert muon_lr == pytest.approx(adamw_lr * 0.05 / 3e-3)
    val = [h["val_loss"] for h in full.history if "val_loss" in h]
    assert val[-1] < val[0] - 0.5


@pytest.mark.timeout(120)
def test_resuming_with_another_optimizer_is_one_line(data_root, tmp_path):
    _run(data_root, tmp_path / "run", max_iters=10)
    with pytest.raises(UserError, match="optimizer='muon'") as e:
        _run(data_root, tmp_path / "run", max_iters=20, init_from="resume", optimizer="adamw")
    assert "\n" not in str(e.value)


def _ddp_worker(rank, port, config):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        run_bare(config)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    # leave without the interpreter's teardown: a gloo thread still joinable at exit aborted a rank now and
    # then ("terminate called without an active exception") after all its work was written
    sys.stdout.flush()
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_two_ddp_workers_match_one_worker_with_accumulation_for_modern_muon(data_root, tmp_path):
    one = tiny_config(data_root, tmp_path / "one", **MODERN, max_iters=10, gradient_accumulation_steps=2)
    two = dict(one, out_dir=str(tmp_path / "two"))
    torch.set_num_threads(1)  # the same thread count as each spawned worker, so both sum alike
    try:
        run_bare(one)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    mp.spawn(_ddp_worker, args=(_free_port(), two), nprocs=2, join=True)
    a = torch.load(tmp_path / "one" / CKPT_NAME, weights_only=True)
    b = torch.load(tmp_path / "two" / CKPT_NAME, weights_only=True)
    assert b["resume"]["num_workers"] == 2 and b["iter_num"] == 10
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert not torch.equal(a["model"]["lm_head.weight"], torch.zeros_like(a["model"]["lm_head.weight"]))


# ---------------------------------------------------------------------------- everything that loads a model

@pytest.fixture(scope="module")
def modern_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("modern") / "out"
    _run(data_root, out, max_iters=10)
    return out


def test_a_modern_checkpoint_samples_through_the_cli_past_its_context(modern_run, data_root, capsys):
    model, ckpt = load_model("resume", str(modern_run))
    assert model.config.arch == "modern" and ckpt["model_extras"]["arch"] == "modern"
    n = 40  # tiny_config's block_size is 32: the sliding cache takes over
    code = cli.main(["sample", f"--out_dir={modern_run}", f"--data_root={data_root}", "--start=!!", "--num_samples=1",
                     f"--max_new_tokens={n}", "--device=cpu", "--top_k=1", "--compile=False"])
    assert code == 0
    chars = json.loads((data_root / "tiny" / "meta.json").read_text())["chars"]
    text = capsys.readouterr().out.split("\n")[0]
    expected = banded_greedy(model, [chars.index("!")] * 2, n, model.config.block_size)
    assert text == "".join(chars[i] for i in expected)


@pytest.mark.timeout(120)
def test_a_modern_model_benches():
    tiny = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, real_data=False, compile=False,
                device="cpu", warmup_steps=1, timed_steps=3)
    modern = run_bench(BenchConfig(**tiny, arch="modern"), verbose=False)
    gpt2 = run_bench(BenchConfig(**tiny), verbose=False)
    assert modern["tokens_per_s"] > 0 and torch.isfinite(torch.tensor(modern["loss"]))
    assert modern["params"] != gpt2["params"]  # it benched the modern model, not the default


def test_hf_export_of_a_modern_model_is_one_clear_line(modern_run, tmp_path, capsys):
    with pytest.raises(UserError, match="arch='modern'") as e:
        export_hf(modern_model(), str(tmp_path / "hf"))
    assert "\n" not in str(e.value)
    code = cli.main(["export", f"--out_dir={modern_run}", f"--hf_dir={tmp_path / 'hf2'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "arch='modern'" in err[0]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="bias=True does not go with arch='modern'"):
        TrainConfig(arch="modern", bias=True)
    with pytest.raises(ConfigError, match="optimizer='sgd'.*adamw, muon"):
        from_dict(TrainConfig, {"optimizer": "sgd"})
    with pytest.raises(ConfigError, match="arch='modrn'.*did you mean 'modern'"):
        from_dict(TrainConfig, {"arch": "modrn"})
    with pytest.raises(ConfigError, match="muon_lr"):
        TrainConfig(muon_lr=0)


def test_the_modern_sweep_preset_searches_both_learning_rates_of_the_recipe():
    from nanogpt_ray.sweep import base_train_config, count_params, load_sweep, search_axes, trial_train_config

    sweep = load_sweep(["configs/sweep_modern_shakespeare_char_cpu.py"])
    base = base_train_config(sweep)
    axes = search_axes(sweep, base)
    assert set(axes) == {"learning_rate", "muon_lr"}
    trial = trial_train_config(base, {"learning_rate": 4e-3, "muon_lr": 0.1})
    assert (trial.arch, trial.optimizer, trial.muon_lr, trial.learning_rate) == ("modern", "muon", 0.1, 4e-3)
    modern = build_gpt(GPTConfig(n_layer=4, n_head=1, n_embd=128, block_size=8, vocab_size=65, arch="modern"))
    assert count_params(4, 128, 65, arch="modern") == modern.get_num_params()  # the results table counts the right model
