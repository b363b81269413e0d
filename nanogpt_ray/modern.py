"""The modern recipe's kernels (arch="modern", after modded-nanogpt and nanochat): parameter-free RMSNorm and
ReLU² as single autograd nodes, rotary position angles, and the logit soft-cap. model.py's classes use them when
the config asks for the modern flavour. Imports only torch.
"""

import torch
import torch.nn as nn

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
