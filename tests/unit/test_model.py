"""The GPT model: forward, init, weight tying, optimizer groups, GPT-2 equivalence, generation, MFU."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt_ray.config import PADDED_VOCAB_SIZE
from nanogpt_ray.device import default_peak_flops, peak_flops_for_device
from nanogpt_ray.engine import generate, sample_next_token
from nanogpt_ray.hf import from_hf_state_dict
from nanogpt_ray.model import GPT, GPTConfig

VOCAB = 97
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread is faster than two that wait for each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides):
    args = dict(block_size=16, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    args.update(overrides)
    return GPTConfig(**args)


def peaked_model(seed=0, **overrides):
    """A small model with weights far from the init, so its next-token distributions are sharp and greedy
    decoding has clear winners (no near-ties that float rounding could flip)."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def full_logits(model, idx):
    logits, _ = model(idx, targets=torch.zeros_like(idx))  # targets make forward compute every position
    return logits


def greedy_reference(model, idx, max_new_tokens):
    """nanoGPT's generate with argmax: full recomputation over the last block_size tokens each step."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat((idx, logits[:, -1, :].argmax(dim=-1, keepdim=True)), dim=1)
    return idx


# ---------------------------------------------------------------------------- forward, init, tying


def test_forward_with_targets_gives_every_position_and_a_scalar_loss():
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, VOCAB, (3, 10))
    logits, loss = model(idx, targets=torch.randint(0, VOCAB, (3, 10)))
    assert logits.shape == (3, 10, VOCAB)
    assert loss.shape == () and torch.isfinite(loss)


def test_forward_without_targets_gives_only_the_last_position():
    model = peaked_model()
    idx = torch.randint(0, VOCAB, (3, 10))
    logits, loss = model(idx)
    assert loss is None
    assert logits.shape == (3, 1, VOCAB)
    torch.testing.assert_close(logits[:, 0], full_logits(model, idx)[:, -1], atol=TOL, rtol=0)


def test_targets_of_minus_one_are_ignored_in_the_loss():
    model = peaked_model()
    idx = torch.randint(0, VOCAB, (2, 8))
    targets = torch.randint(0, VOCAB, (2, 8))
    masked = targets.clone()
    masked[:, 4:] = -1
    logits, loss = model(idx, targets=masked)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, VOCAB), targets[:, :4].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_loss_at_init_is_close_to_log_vocab():
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=64, n_layer=4)).eval()
    idx = torch.randint(0, VOCAB, (8, 64))
    _, loss = model(idx, targets=torch.randint(0, VOCAB, (8, 64)))
    assert abs(loss.item() - math.log(VOCAB)) < 0.3


def test_forward_rejects_a_sequence_longer_than_block_size():
    model = GPT(tiny_config(block_size=8))
    with pytest.raises(AssertionError, match="block size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_token_embedding_and_lm_head_share_one_tensor():
    model = GPT(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    # still one tensor after an optimizer step: a change through one name shows through the other
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    _, loss = model(torch.randint(0, VOCAB, (2, 8)), targets=torch.randint(0, VOCAB, (2, 8)))
    loss.backward()
    optimizer.step()
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    # counted once
    assert sum(p.numel() for p in model.parameters()) == model.get_num_params(non_embedding=False)


def test_residual_projections_get_the_scaled_init():
    torch.manual_seed(0)
    n_layer = 8
    model = GPT(tiny_config(n_layer=n_layer, n_embd=128, n_head=4))
    proj_std = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.transformer.h]).std().item()
    fc_std = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h]).std().item()
    assert proj_std == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.05)
    assert fc_std == pytest.approx(0.02, rel=0.05)


def test_crop_block_size_keeps_the_first_positions_and_limits_the_context():
    model = peaked_model(block_size=32)
    wpe_before = model.transformer.wpe.weight.detach().clone()
    idx = torch.randint(0, VOCAB, (2, 12))
    logits_before = full_logits(model, idx)

    model.crop_block_size(12)

    assert model.config.block_size == 12
    assert model.transformer.wpe.weight.shape == (12, 32)
    assert torch.equal(model.transformer.wpe.weight.detach(), wpe_before[:12])
    torch.testing.assert_close(full_logits(model, idx), logits_before, atol=TOL, rtol=0)
    with pytest.raises(AssertionError):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(AssertionError):
        model.crop_block_size(13)  # cropping cannot grow the context


@pytest.mark.parametrize("bias", [True, False])
def test_configure_optimizers_decays_only_matrices(bias):
    n_layer = 3
    model = GPT(tiny_config(n_layer=n_layer, bias=bias))
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=3e-4, betas=(0.9, 0.99), device_type="cpu")

    decay, nodecay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and nodecay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in nodecay["params"])
    # wte (tied to lm_head, counted once), wpe, and per block c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert len(decay["params"]) == 2 + 4 * n_layer
    # per block ln_1, ln_2 weights (+ their biases and 4 Linear biases), plus ln_f
    assert len(nodecay["params"]) == (8 * n_layer + 2 if bias else 2 * n_layer + 1)
    n_grouped = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert n_grouped == model.get_num_params(non_embedding=False)
    assert optimizer.param_groups[0]["lr"] == 3e-4 and optimizer.param_groups[0]["betas"] == (0.9, 0.99)


def test_gpt2_shape_has_124m_parameters_on_the_meta_device():
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024, bias=True)
    with torch.device("meta"):
        model = GPT(config)
        hf = GPT2LMHeadModel(GPT2Config())  # GPT-2's defaults are the 124M shape
    V, P, C, L = 50257, 1024, 768, 12
    per_block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    by_hand = V * C + P * C + L * per_block + 2 * C  # wte (= lm_head), wpe, blocks, ln_f
    hf_total = sum(p.numel() for p in hf.parameters())

    assert model.get_num_params(non_embedding=False) == by_hand == hf_total == 124_439_808
    assert model.get_num_params() == 124_439_808 - P * C == 123_653_376
    assert model.lm_head.weight.is_meta


# ---------------------------------------------------------------------------- GPT-2 equivalence


def test_logits_equal_a_random_transformers_gpt2_after_conversion():
    torch.manual_seed(0)
    hf_config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # move far from the init so biases, LayerNorms and GELU's curve all show in the logits
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ours = GPT(GPTConfig(block_size=64, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, bias=True, gelu="tanh")).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict()))  # strict: every key maps

    idx = torch.randint(0, VOCAB, (3, 64))
    with torch.no_grad():
        expected = hf(idx).logits
        got = full_logits(ours, idx)
        last, _ = ours(idx)
    assert expected.abs().max() > 1.0  # the comparison is not between near-zero logits
    assert (got - expected).abs().max().item() <= TOL
    assert (last[:, 0] - expected[:, -1]).abs().max().item() <= TOL


# ---------------------------------------------------------------------------- generation


@pytest.mark.parametrize("prompt_len, new_tokens", [(5, 8), (5, 40), (16, 10)])
def test_kv_cache_greedy_tokens_equal_full_recomputation(prompt_len, new_tokens):
    # (5, 40) and (16, 10) run past block_size=16: the window slides and the cache is rebuilt
    model = peaked_model()
    idx = torch.randint(0, VOCAB, (2, prompt_len))
    reference = greedy_reference(model, idx, new_tokens)
    cached = generate(model, idx, new_tokens, top_k=1, use_cache=True)
    uncached = generate(model, idx, new_tokens, top_k=1, use_cache=False)
    assert cached.shape == (2, prompt_len + new_tokens)
    assert torch.equal(cached[:, :prompt_len], idx)
    assert torch.equal(cached, reference)
    assert torch.equal(uncached, reference)
    assert len(set(reference[0, prompt_len:].tolist())) > 1  # a real sequence, not one token repeated


@pytest.mark.parametrize("new_tokens", [8, 40])
def test_engine_samples_the_same_tokens_as_the_reference_generate(new_tokens):
    # the same global seed, one multinomial draw per step: the cached engine must reproduce nanoGPT's sampler,
    # also past block_size=16 where the window slides
    model = peaked_model(seed=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.3)  # soft distributions: sampling has real choices to make
    idx = torch.randint(0, VOCAB, (3, 5))
    torch.manual_seed(99)
    reference = model.generate(idx, new_tokens, temperature=0.9, top_k=20)
    torch.manual_seed(99)
    ours = generate(model, idx, new_tokens, temperature=0.9, top_k=20)
    assert torch.equal(ours, reference)
    torch.manual_seed(100)
    assert not torch.equal(generate(model, idx, new_tokens, temperature=0.9, top_k=20), reference)


def test_the_model_default_vocabulary_is_the_padded_gpt2_one():
    assert GPTConfig().vocab_size == PADDED_VOCAB_SIZE == 50304 and PADDED_VOCAB_SIZE % 64 == 0


@pytest.mark.parametrize("new_tokens", [6, 30])
def test_ragged_batch_generates_each_row_as_it_would_alone(new_tokens):
    model = peaked_model(seed=1)
    torch.manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,)) for n in (3, 9, 6)]
    width = max(len(p) for p in prompts)
    batch = torch.zeros(len(prompts), width, dtype=torch.long)  # left padding with token 0
    for row, prompt in enumerate(prompts):
        batch[row, width - len(prompt):] = prompt

    out = generate(model, batch, new_tokens, top_k=1, prompt_lengths=[len(p) for p in prompts])

    assert out.shape == (3, width + new_tokens)
    for row, prompt in enumerate(prompts):
        alone = generate(model, prompt[None], new_tokens, top_k=1)
        assert torch.equal(out[row, width:], alone[0, len(prompt):]), f"row {row} differs from its solo run"


def test_row_generators_make_a_sample_independent_of_its_batch():
    model = peaked_model(seed=2)
    with torch.no_grad():  # soften the distributions so sampling has real choices to make
        model.lm_head.weight.mul_(0.3)
    prompt = torch.randint(0, VOCAB, (1, 4))
    others = torch.randint(0, VOCAB, (2, 4))

    def gen(seed):
        g = torch.Generator()
        g.manual_seed(seed)
        return g

    alone = generate(model, prompt, 20, temperature=1.0, generators=[gen(7)])
    batch = generate(model, torch.cat([others[:1], prompt, others[1:]]), 20, temperature=1.0,
                           generators=[gen(100), gen(7), gen(200)])
    torch.manual_seed(12345)  # the global RNG plays no part
    again = generate(model, prompt, 20, temperature=1.0, generators=[gen(7)])
    other_seed = generate(model, prompt, 20, temperature=1.0, generators=[gen(8)])

    assert torch.equal(batch[1], alone[0])
    assert torch.equal(again, alone)
    assert not torch.equal(other_seed, alone)


def _draws(logits, n=4000, **kwargs):
    """The set of tokens sample_next_token picks over n draws from the same logits."""
    return set(sample_next_token(logits.expand(n, -1).clone(), **kwargs).flatten().tolist())


def test_top_k_and_top_p_restrict_the_candidates():
    torch.manual_seed(0)
    # probabilities 0.05, 0.5, 0.15, 0.3 (unsorted, so the sort and scatter back are exercised)
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    assert _draws(logits) == {0, 1, 2, 3}
    assert _draws(logits, top_k=1) == {1}
    assert _draws(logits, top_k=2) == {1, 3}
    assert _draws(logits, top_p=0.5) == {1}  # the top token alone reaches 0.5
    assert _draws(logits, top_p=0.6) == {1, 3}
    assert _draws(logits, top_p=0.9) == {1, 3, 2}
    assert _draws(logits, top_p=1.0) == {0, 1, 2, 3}
    assert _draws(logits, top_k=3, top_p=0.6) == {1, 3}
    assert _draws(logits, temperature=1e-4) == {1}  # near-zero temperature is argmax


def test_top_k_larger_than_vocab_is_the_whole_vocab():
    logits = torch.zeros(1, 5)
    torch.manual_seed(0)
    assert _draws(logits, top_k=50) == {0, 1, 2, 3, 4}


def test_masked_fallback_attention_equals_the_flash_path():
    model = peaked_model(block_size=32)
    idx = torch.randint(0, VOCAB, (2, 32))
    prompts = torch.randint(0, VOCAB, (2, 7))
    flash_logits = full_logits(model, idx)
    flash_tokens = generate(model, prompts, 30, top_k=1, prompt_lengths=[7, 4])

    for block in model.transformer.h:
        block.attn.flash = False
    assert (full_logits(model, idx) - flash_logits).abs().max().item() <= TOL
    assert torch.equal(generate(model, prompts, 30, top_k=1, prompt_lengths=[7, 4]), flash_tokens)


# ---------------------------------------------------------------------------- MFU


def test_estimate_mfu_with_an_explicit_peak():
    model = GPT(tiny_config(block_size=64, n_layer=4))
    cfg = model.config
    N = model.get_num_params()
    flops_per_token = 6 * N + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.block_size
    flops_per_iter = flops_per_token * cfg.block_size * 8
    peak = 989e12
    dt = 2 * flops_per_iter / peak  # running at half of peak

    mfu = model.estimate_mfu(fwdbwd_per_iter=8, dt=dt, peak_flops=peak)
    assert 0 < mfu <= 1
    assert mfu == pytest.approx(0.5)
    assert model.estimate_mfu(fwdbwd_per_iter=8, dt=dt, peak_flops=312e12) == pytest.approx(0.5 * 989 / 312)


def test_estimate_mfu_on_cpu_measures_a_peak():
    model = GPT(tiny_config(block_size=64))
    mfu = model.estimate_mfu(fwdbwd_per_iter=1, dt=1.0, peak_flops=default_peak_flops("cpu"))
    assert 0 < mfu < 1  # a tiny model doing one step a second is far below the machine's matmul speed


def test_peak_table_knows_the_gpus_by_their_cuda_names():
    assert peak_flops_for_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_device("NVIDIA H200") == 989e12
    assert peak_flops_for_device("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_device("NVIDIA A100-PCIE-40GB") == 312e12
    assert peak_flops_for_device("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for_device("Some Future Accelerator") is None
