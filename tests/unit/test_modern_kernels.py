"""The modern flavour's hand-written pieces against what they replace: RMSNorm and ReLU² with closed-form
gradients against autograd through the plain ops, the two-multiply rotary form against the pairwise rotation,
and the batched Muon against torch.optim.Muon (the same update, bit for bit, and interchangeable state)."""

import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt_ray.modern import apply_rotary, relu_squared, rms_norm, rotary_angles
from nanogpt_ray.muon import Muon, orthogonalize


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_norm_matches_autograd_through_the_plain_ops(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, 16, generator=g, dtype=dtype) * 3).requires_grad_()
    dy = torch.randn(3, 5, 16, generator=g, dtype=dtype)
    eps = torch.finfo(torch.float32).eps
    y = rms_norm(x, eps)
    (dx,) = torch.autograd.grad(y, x, dy)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = x_ref.float() * torch.rsqrt(x_ref.float().pow(2).mean(-1, keepdim=True) + eps)
    (dx_ref,) = torch.autograd.grad(y_ref.to(dtype), x_ref, dy)
    assert y.dtype == dtype
    torch.testing.assert_close(y, y_ref.to(dtype), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(y.float(), F.rms_norm(x.detach().float(), (16,), eps=eps), rtol=1e-5, atol=1e-6)


def test_rms_norm_gradcheck_in_double():
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    # the forward computes in fp32 (as training does), so check the formula itself on a double-precision copy
    from nanogpt_ray.modern import _RMSNorm

    class Double(_RMSNorm):
        @staticmethod
        def forward(ctx, x, eps):
            rstd = torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
            y = x * rstd
            ctx.save_for_backward(y, rstd)
            return y

    assert torch.autograd.gradcheck(lambda t: Double.apply(t, 1e-6), (x,))


def test_relu_squared_value_and_gradient():
    h = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    y = relu_squared(h)
    y.backward(torch.ones_like(y))
    assert y.tolist() == [0.0, 0.0, 0.0, 0.25, 9.0]
    assert h.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 6.0]  # 2·relu(h)


def test_rotary_is_the_pairwise_rotation_and_keeps_relative_dot_products():
    hs, T = 8, 6
    x = torch.randn(2, T, 3, hs, dtype=torch.float64)
    cos, sin = rotary_angles(torch.arange(T), hs)
    y = apply_rotary(x, cos.double(), sin.double())
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq  # (T, hs/2)
    c, s = angle.cos()[:, None, :], angle.sin()[:, None, :]  # (T, 1, hs/2)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
    expected = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    # a query at position p and a key at q see each other the same way as at p + 5 and q + 5
    q, k = torch.randn(hs, dtype=torch.float64), torch.randn(hs, dtype=torch.float64)
    def rot(v, pos):
        cos, sin = rotary_angles(torch.tensor([pos]), hs)
        return apply_rotary(v.view(1, 1, 1, hs), cos.double(), sin.double()).view(hs)
    assert math.isclose(rot(q, 7) @ rot(k, 3), rot(q, 12) @ rot(k, 8), rel_tol=1e-5)  # angles are fp32


SHAPES = [(24, 8), (8, 8), (32, 8), (8, 32), (24, 8), (8, 32)]  # repeats and an (m, n)/(n, m) pair batch together


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g) * 0.02) for s in SHAPES]


@pytest.mark.parametrize("nesterov", [True, False])
def test_batched_muon_equals_torch_muon(nesterov):
    ours, theirs = _params(1), _params(1)
    opt = Muon(ours, lr=0.05, weight_decay=0.1, nesterov=nesterov)
    ref = torch.optim.Muon(theirs, lr=0.05, weight_decay=0.1, nesterov=nesterov)
    for step in range(4):
        g = torch.Generator().manual_seed(100 + step)
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    moved = sum((a - b).abs().sum() for a, b in zip(ours, _params(1)))
    assert moved > 0


def test_muon_state_loads_from_torch_muon_and_continues_identically():
    ours, theirs = _params(2), _params(2)
    ref = torch.optim.Muon(theirs, lr=0.03)
    for p in theirs:
        p.grad = torch.ones_like(p)
    ref.step()
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.copy_(b)
    opt = Muon(ours, lr=0.5)
    opt.load_state_dict(ref.state_dict())
    assert opt.param_groups[0]["lr"] == 0.03
    for a, b in zip(ours, theirs):
        a.grad = torch.full_like(a, 0.5)
        b.grad = a.grad.clone()
    opt.step()
    ref.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_orthogonalize_pushes_singular_values_towards_one():
    m = torch.randn(3, 16, 48) * torch.tensor([0.01, 1.0, 100.0]).view(3, 1, 1)
    s = torch.linalg.svdvals(orthogonalize(m).float())
    assert s.min() > 0.5 and s.max() < 1.5  # Muon's quintic lands in roughly (0.7, 1.2), whatever the scale


def test_muon_refuses_non_matrices():
    with pytest.raises(ValueError, match="2-D parameters only"):
        Muon([torch.nn.Parameter(torch.zeros(4))])
