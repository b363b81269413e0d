"""
A GPT-2 language model in one file, after nanoGPT's model.py.

Module names match OpenAI's GPT-2 checkpoint (wte, wpe, c_attn, c_proj, c_fc, ln_f) so weights map over
with four transposes (hf.py). The forward pass takes an optional KV cache, positions and attention mask:
engine.py uses them for batched, cached generation; `generate` below is nanoGPT's short reference.

This is nanoGPT's model (GPTConfig.arch="gpt2", the default): learned positions, LayerNorm, GELU, tied head.
The opt-in modern flavour is its own model in modern.py, and modern.build_gpt(config) builds whichever a
config names.

Imports only torch, plus what sits beside it and imports only torch or the standard library: the config
(config.GPTConfig, the one list of model options) and Muon (muon.py, for configure_optimizers).
"""

import inspect
import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from .config import GPTConfig  # noqa: F401  (stdlib only: what a model is, one list for every module)
from .muon import Muon, Optimizers, muon_param_names


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop only the bias)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_index=0):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.layer_index = layer_index
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # flash attention is in PyTorch >= 2.0; the masked fallback keeps older versions working
        self.flash = hasattr(torch.nn.functional, "scaled_dot_product_attention")

    def forward(self, x, kv_cache=None, attn_mask=None):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        # calculate query, key, values for all heads in batch and move head forward to be the batch dim
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        return self.resid_dropout(self.c_proj(self.attend(q, k, v, kv_cache, attn_mask)))

    def attend(self, q, k, v, kv_cache=None, attn_mask=None):
        """Causal self-attention of q, k, v (B, nh, T, hs), through the KV cache when there is one; returns the
        heads side by side (B, T, C). The modern model computes its own q and k and attends the same way."""
        B, _, T, _ = q.size()
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)  # (B, nh, S, hs), S = cached + T

        S = k.size(2)
        if attn_mask is None and T == S:
            # the common training case: plain causal attention, the fastest kernel
            is_causal, mask = True, None
        elif attn_mask is None and T == 1:
            is_causal, mask = False, None  # one new token may look at everything before it
        else:
            is_causal = False
            mask = attn_mask if attn_mask is not None else _causal_mask(T, S, q.device)
        dropout_p = self.dropout if self.training else 0.0
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
            if is_causal:
                mask = _causal_mask(T, S, q.device)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)
        return y.transpose(1, 2).contiguous().view(B, T, -1)  # re-assemble all head outputs side by side


def _causal_mask(T, S, device):
    """(T, S) boolean mask: query t (at absolute position S - T + t) sees keys up to its own position."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # nanoGPT uses the exact GELU; OpenAI's GPT-2 was trained with the tanh approximation. Which one a
        # model was trained with matters once weights move between the two (hf.py, checkpoints).
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer_index=0):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), kv_cache, attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


def default_positions(kv_cache, t, device):
    """Positions (t) of the next t tokens: after what the cache holds and the positions its sliding let go."""
    start = kv_cache.dropped + kv_cache.length if kv_cache is not None else 0
    return torch.arange(start, start + t, dtype=torch.long, device=device)


class GPT(nn.Module):
    relative_positions = False  # learned positions end at block_size: past it the engine refills its cache


    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        assert config.arch == "gpt2", f"arch={config.arch!r} is another model: build it with modern.build_gpt(config)"
        self.config = config

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection reuses the token embedding (fewer params, better samples).
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections shrink with depth so the residual stream does not grow
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """Parameter count; position embeddings are left out by default, as they do no matmuls.
        Token embeddings stay in: tied to lm_head, they are the final layer's weights."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, kv_cache=None, positions=None, attn_mask=None):
        """idx (B, T) tokens. With targets: logits (B, T, V) and the mean cross-entropy.
        Without: logits of the last position only (B, 1, V), all inference needs.
        kv_cache/positions/attn_mask serve engine.generate: cached decoding and left-padded rows."""
        b, t = idx.size()
        start = kv_cache.length if kv_cache is not None else 0
        assert start + t <= self.config.block_size, \
            f"Cannot forward sequence of length {start + t}, block size is only {self.config.block_size}"
        if positions is None:
            positions = default_positions(kv_cache, t, idx.device)  # shape (t)

        tok_emb = self.transformer.wte(idx)  # token embeddings of shape (b, t, n_embd)
        pos_emb = self.transformer.wpe(positions)  # position embeddings of shape (t, n_embd) or (b, t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x, kv_cache, attn_mask)
        if kv_cache is not None:
            kv_cache.length += t
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            # inference-time mini-optimization: only forward the lm_head on the very last position
            logits = self.lm_head(x[:, [-1], :])  # note: using list [-1] to preserve the time dim
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to finetune GPT-2 (block 1024) with a smaller block."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    # ------------------------------------------------------------------ training helpers

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer="adamw",
                             muon_lr=0.02, muon_momentum=0.95):
        """AdamW where only matrices (>= 2-D: matmul weights, embeddings) decay; biases and norms do not.
        optimizer="muon": the blocks' matrices go to Muon at muon_lr instead (Muon takes 2-D
        weights only), and AdamW keeps the rest (embeddings, head, gains, biases). Every param group carries
        `lr_ratio` (its lr over learning_rate), so the loop's schedule scales both optimizers alike."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        muon_names = muon_param_names(self) if optimizer == "muon" else []
        muon_params = [params.pop(name) for name in muon_names]
        decay_params = [p for p in params.values() if p.dim() >= 2]
        nodecay_params = [p for p in params.values() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay, "lr_ratio": 1.0},
            {"params": nodecay_params, "weight_decay": 0.0, "lr_ratio": 1.0},
        ]
        # The fused kernel is one launch per step instead of several per tensor; it exists for cuda (and cpu in new torch).
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        use_fused = fused_available and device_type == "cuda"
        extra_args = dict(fused=True) if use_fused else dict()
        adamw = torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)
        if optimizer == "adamw":
            return adamw
        muon = Muon([{"params": muon_params, "lr_ratio": muon_lr / learning_rate}], lr=muon_lr,
                                weight_decay=weight_decay, momentum=muon_momentum)
        return Optimizers(muon, adamw)

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12·L·H·Q·T."""
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilization: achieved FLOP/s over peak_flops (device.default_peak_flops knows the
        right peak for a device). fwdbwd_per_iter sequences of block_size tokens took dt seconds."""
        flops_per_iter = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return (flops_per_iter / dt) / peak_flops

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """nanoGPT's reference sampler: take idx (b, t), feed each prediction back in, max_new_tokens times.
        A full forward per token; engine.generate makes the same tokens with a KV cache and batches."""
        for _ in range(max_new_tokens):
            # if the sequence context is growing too long we must crop it at block_size
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            # pluck the logits at the final step and scale by desired temperature
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
