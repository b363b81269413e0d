"""Generation over a GPT: a KV cache, left-padded batches of different prompt lengths, one random generator
per row, temperature / top-k / top-p, and what happens when the text outgrows the context window.

`model.GPT.generate` is the short reference (nanoGPT's: a full forward per token); `generate` here computes
the same tokens with a cache, and the tests hold the two equal. The model is any callable with GPT's
forward signature and a `.config`, so a `torch.compile`d GPT runs compiled here.

Past block_size there are two ways to keep going:
- exact (context_shift=0, the default): the window slides one token a step, exactly as nanoGPT. Learned
  absolute positions then move under every kept token, so no cached key stays valid: each step past the
  window is a full forward of block_size tokens.
- context shift (context_shift=n): when the window is full, the oldest n tokens go at once and the cache is
  rebuilt once per n tokens (llama.cpp's "context shift"): much faster, but not nanoGPT's tokens.

A model with rotary positions (arch="modern") never rebuilds its cache: attention between a rotated query and
a rotated key depends only on their distance, so when the window moves the oldest cached entries are dropped
and the rest stay valid; every new token costs one single-token step. Each token is then computed once, with
the block_size tokens before it in view (sliding-window attention, as Mistral's): the same tokens as a full
forward over the whole text with a banded causal mask of width block_size, not as nanoGPT's re-prefilled
window (there, older tokens are recomputed as if the text began at the window's start).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to block_size."""

    def __init__(self, n_layer, batch_size, n_head, block_size, head_size, device, dtype):
        shape = (batch_size, n_head, block_size, head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0  # positions filled, the same for every layer once a forward pass ends
        self.dropped = 0  # positions let go from the front (rotary sliding window): the next position is dropped + length

    @classmethod
    def for_model(cls, model, batch_size, device):
        cfg = model.config
        return cls(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head, device,
                   model.lm_head.weight.dtype)

    def update(self, layer, k, v):
        """Store this step's k, v (B, nh, T, hs) for one layer; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


    def drop_oldest(self, n):
        """Forget the n oldest positions of every layer (rotary models only: their cached keys do not depend
        on where the window begins)."""
        keep = self.length - n
        for cache in self.keys + self.values:
            cache[:, :, :keep] = cache[:, :, n:self.length].clone()
        self.length, self.dropped = keep, self.dropped + n


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generators=None):
    """One token per row from logits (B, V): temperature, then top-k, then top-p (nucleus)."""
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("Inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first token always stays)
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(1, sorted_index, drop_sorted)
        logits = logits.masked_fill(drop, -float("Inf"))
    probs = F.softmax(logits, dim=-1)
    if generators is None:
        return torch.multinomial(probs, num_samples=1)
    return torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def padding_positions_and_mask(pad, total_len, step_len):
    """Positions (B, step_len) and attention mask (B, 1, step_len, total_len) for left-padded rows,
    or (None, None) when no row is padded so attention takes its fastest path."""
    if not bool((pad > 0).any()):
        return None, None
    device = pad.device
    absolute = torch.arange(total_len - step_len, total_len, device=device)  # positions of this step's tokens
    positions = (absolute.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)  # (B, step_len)
    keys = torch.arange(total_len, device=device)
    causal = keys.unsqueeze(0) <= absolute.unsqueeze(1)  # (step_len, total_len)
    real_key = keys.unsqueeze(0) >= pad.unsqueeze(1)  # (B, total_len)
    mask = causal.unsqueeze(0) & real_key.unsqueeze(1)  # (B, step_len, total_len)
    # a padding query sees no real key; letting it see itself avoids an all-masked (NaN) softmax row
    mask = mask | (keys.unsqueeze(0) == absolute.unsqueeze(1)).unsqueeze(0)
    return positions, mask.unsqueeze(1)


def window_start(length, block_size, context_shift, start):
    """Where the context the next token sees begins, for a text of `length` tokens whose window began at
    `start`: unchanged while it fits; past block_size, one token further (exact) or `context_shift` further."""
    if length - start <= block_size:
        return start
    return length - block_size + context_shift


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             prompt_lengths=None, generators=None, use_cache=True, context_shift=0):
    """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

    prompt_lengths: rows of different lengths, left-padded to T; each row then generates exactly as it
    would alone. generators: one torch.Generator per row, so a row's sample does not depend on its batch.
    use_cache=False recomputes the whole window every step (the reference the cache is tested against).
    context_shift: see the module docstring.
    """
    B, T0 = idx.shape
    block_size = model.config.block_size
    rotary = getattr(model.config, "arch", "gpt2") == "modern"  # the cache can slide (module docstring)
    shift = min(max(int(context_shift or 0), 0), block_size - 1)
    pad = torch.zeros(B, dtype=torch.long, device=idx.device)
    if prompt_lengths is not None:
        pad = T0 - torch.as_tensor(prompt_lengths, dtype=torch.long, device=idx.device)
    start, cache = 0, None
    for _ in range(max_new_tokens):
        length = idx.size(1)
        new_start = window_start(length, block_size, shift, start)
        if new_start != start:
            if rotary and cache is not None:
                cache.drop_oldest(new_start - start)  # relative positions: the kept keys stay valid
            else:
                cache = None  # the window moved: cached keys sit at stale (learned) positions
            start = new_start
        context = idx[:, start:]
        if cache is not None:
            step_tokens = context[:, -1:]  # the cache holds everything before the newest token
        else:
            step_tokens = context  # prefill the window
            # a cache pays off only if the window stays put for the next step
            stays = rotary or shift > 0 or context.size(1) < block_size
            cache = KVCache.for_model(model, B, idx.device) if use_cache and stays else None
        positions, mask = padding_positions_and_mask((pad - start).clamp(min=0), context.size(1), step_tokens.size(1))
        if rotary:  # each token keeps the position it has in its row's text, however far the window slid
            step_len = step_tokens.size(1)
            absolute = torch.arange(length - step_len, length, device=idx.device)
            positions = (absolute.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)  # (B, step_len)
        logits, _ = model(step_tokens, kv_cache=cache, positions=positions, attn_mask=mask)
        idx_next = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generators)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx
