"""The opt-in modern model (arch="modern", after modded-nanogpt and nanochat), beside nanoGPT's in model.py:
rotary positions, QK-norm, ReLU² MLP, parameter-free RMSNorm, no biases, an untied zero-initialised head,
zero-initialised residual projections and a tanh soft-cap on the logits. Same module names as model.py where the
weights mean the same thing, the same forward signature and the same hooks for the engine (KV cache, positions,
attention mask); it inherits GPT's optimizer set-up, MFU estimate and reference generate.

First its kernels (RMSNorm and ReLU² as single autograd nodes, rotary angles), then the model, then build_gpt:
the one way to build the model a config names. Imports only torch and model.py.
"""

import torch
import torch.nn as nn
from torch.nn import functional as F

from .model import GPT, CausalSelfAttention, default_positions

LOGIT_SOFTCAP = 15.0  # modern: logits = cap * tanh(logits / cap), so no logit can run away early in training


class RMSNorm(nn.Module):
    """Parameter-free RMSNorm (the modern flavour): no gain, no bias, nothing to tune or decay."""

    def forward(self, x):
        return rms_norm(x)


def rms_norm(x, eps=torch.finfo(torch.float32).eps):
    """x / rms(x) over the last dimension, in fp32, returned in x's dtype."""
    return _RMSNorm.apply(x, eps)


class _RMSNorm(torch.autograd.Function):
    # F.rms_norm is a composite op on CPU: autograd records pow, mean, add, rsqrt and mul, each with its own
    # backward, and a block has six norms; at nanoGPT's small CPU shapes those kernel launches, not FLOPs, set
    # the time. One node with the closed-form gradient, dx = r * (dy - y * mean(dy * y)), launches far fewer.
    @staticmethod
    def forward(ctx, x, eps):
        xf = x.float()
        rstd = torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps)
        y = xf * rstd
        ctx.save_for_backward(y, rstd)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        y, rstd = ctx.saved_tensors
        dyf = dy.float()
        return (rstd * (dyf - y * (dyf * y).mean(-1, keepdim=True))).to(dy.dtype), None


def relu_squared(h):
    """relu(h)², the modern MLP's activation."""
    return _ReluSquared.apply(h)


class _ReluSquared(torch.autograd.Function):
    # relu then square records two nodes (threshold and pow backward); the gradient is simply 2·relu(h)·dy
    @staticmethod
    def forward(ctx, h):
        r = torch.relu(h)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, dy):
        (r,) = ctx.saved_tensors
        return 2 * r * dy


def rotary_angles(positions, head_size, base=10000.0):
    """(cos, sin) of the rotary angles for positions (T) or (B, T), full head width, shaped to broadcast over
    (B, T, nh, hs). Computed from the positions themselves, so there is no table to outgrow: any position works.
    sin carries the rotation's sign (-sin on the first half), so apply_rotary is two multiplies and an add."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32) / head_size))
    angles = positions.float().unsqueeze(-1) * inv_freq  # (T, hs/2) or (B, T, hs/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1).unsqueeze(-2), torch.cat((-sin, sin), dim=-1).unsqueeze(-2)  # (.., T, 1, hs)


def apply_rotary(x, cos, sin):
    """Rotate each (first half, second half) pair of x (B, T, nh, hs) by its position's angle:
    (x1, x2) -> (x1·cos - x2·sin, x2·cos + x1·sin). The dot product of a rotated query and key depends only on
    their distance, which is what lets a KV cache slide."""
    return x * cos.to(x.dtype) + x.roll(x.size(-1) // 2, dims=-1) * sin.to(x.dtype)


def soft_cap(logits):
    """cap·tanh(logits / cap), in fp32: tanh saturates early in bf16."""
    return LOGIT_SOFTCAP * torch.tanh(logits.float() / LOGIT_SOFTCAP)


# ----------------------------------------------------------------------------- the model

class ModernAttention(CausalSelfAttention):
    """nanoGPT's attention with QK-norm and rotary positions on q and k."""

    def forward(self, x, rotary, kv_cache=None, attn_mask=None):
        B, T, C = x.size()
        hs = C // self.n_head
        qkv = self.c_attn(x)
        # QK-norm bounds the attention logits (stable at high learning rates); then rotate by position.
        # q and k go through both as one (B, T, 2·nh, hs) tensor: half the small kernels of doing each.
        # The cache stores keys already rotated, so a cached key never needs recomputing.
        qk = apply_rotary(rms_norm(qkv[..., :2 * C].view(B, T, 2 * self.n_head, hs)), *rotary)
        q, k = qk.transpose(1, 2).split(self.n_head, dim=1)  # (B, nh, T, hs) each
        v = qkv[..., 2 * C:].view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        return self.resid_dropout(self.c_proj(self.attend(q, k, v, kv_cache, attn_mask)))


class ModernMLP(nn.Module):
    """ReLU² instead of GELU: as good here, cheaper, and sparse."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(relu_squared(self.c_fc(x))))


class ModernBlock(nn.Module):

    def __init__(self, config, layer_index=0):
        super().__init__()
        self.ln_1 = RMSNorm()
        self.attn = ModernAttention(config, layer_index)
        self.ln_2 = RMSNorm()
        self.mlp = ModernMLP(config)

    def forward(self, x, rotary, kv_cache=None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), rotary, kv_cache, attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class ModernGPT(GPT):
    # Attention sees only the distance between tokens (rotary), so the engine's KV cache may slide past block_size.
    relative_positions = True

    def __init__(self, config):
        nn.Module.__init__(self)  # its own modules; GPT's methods for the rest
        assert config.vocab_size is not None
        assert config.block_size is not None
        assert config.arch == "modern" and not config.bias
        self.config = config

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # no position table: rotary lives in attention
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([ModernBlock(config, i) for i in range(config.n_layer)]),
            ln_f=RMSNorm(),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied from wte

        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.zeros_(p)  # every block starts as the identity; the residual stream grows as it learns
        torch.nn.init.zeros_(self.lm_head.weight)  # untied, so it may start at zero: uniform first predictions

    def get_num_params(self, non_embedding=True):
        """Every parameter: there is no position table to leave out."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, kv_cache=None, positions=None, attn_mask=None):
        """GPT.forward's contract. Without a cache the model may run past block_size (rotary positions have no
        table): with a sliding-window attn_mask that is what the engine's sliding cache computes."""
        b, t = idx.size()
        start = kv_cache.length if kv_cache is not None else 0
        assert kv_cache is None or start + t <= self.config.block_size, \
            f"Cannot forward sequence of length {start + t}, block size is only {self.config.block_size}"
        if positions is None:
            positions = default_positions(kv_cache, t, idx.device)  # shape (t)

        rotary = rotary_angles(positions, self.config.n_embd // self.config.n_head)
        x = self.transformer.drop(self.transformer.wte(idx))  # token embeddings of shape (b, t, n_embd)
        for block in self.transformer.h:
            x = block(x, rotary, kv_cache, attn_mask)
        if kv_cache is not None:
            kv_cache.length += t
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = soft_cap(self.lm_head(x))
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = soft_cap(self.lm_head(x[:, [-1], :]))  # only the last position, as GPT.forward
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context; rotary positions have no table to cut, so the shorter context is all there is."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size


def build_gpt(config):
    """The model a config names: nanoGPT's GPT (arch='gpt2') or the modern one. It lives here, not in model.py,
    so that nanoGPT's model file never imports this one."""
    return ModernGPT(config) if config.arch == "modern" else GPT(config)
