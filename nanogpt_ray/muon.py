"""Muon for the blocks' matrices, with the Newton-Schulz orthogonalization batched by shape.

The same update as torch.optim.Muon (Nesterov momentum, five quintic Newton-Schulz steps in bf16, the step scaled
by sqrt(max(1, rows/cols)), decoupled weight decay), and the same param-group keys and state, so checkpoints
written with either load into the other. What differs is the work per step: torch's optimizer orthogonalizes each
matrix on its own, ~15 small matmuls apiece; a GPT block has only four matrix shapes, so stacking the matrices of
one shape makes it ~15 batched matmuls for all of them, which matters where matrices are small and kernel
launches, not FLOPs, set the time (nanoGPT's CPU shapes).

Imports only torch.
"""

from collections import defaultdict

import torch

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)  # quintic coefficients tuned for the steepest slope at zero (Muon's)


def orthogonalize(matrices: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = 1e-7):
    """(N, rows, cols) -> approximately U·Vᵀ of each matrix's SVD (singular values pushed towards 1, not exactly
    to 1: enough for the update and cheaper than converging), in bf16, as Muon does."""
    a, b, c = coefficients
    x = matrices.bfloat16()
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        x = x.mT  # iterate on the side with fewer rows: the Gram matrix is the smaller one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b·G + c·G²
        x = torch.baddbmm(x, poly, x, beta=a)  # a·X + (b·G + c·G²)·X
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Muon (MomentUm Orthogonalized by Newton-Schulz) for 2-D parameters; see the module docstring."""

    def __init__(self, params, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=NS_COEFFICIENTS, eps=1e-7, ns_steps=5, adjust_lr_fn=None):
        if adjust_lr_fn not in (None, "original"):
            raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r}: only the original sqrt(max(1, rows/cols)) is built")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D parameters only; got one of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
            momentum = group["momentum"]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
            # one batch per shape up to transposition: an (m, n) and an (n, m) matrix iterate together
            by_shape = defaultdict(list)
            for i, p in enumerate(params):
                by_shape[(min(p.shape), max(p.shape))].append(i)
            lr, decay = group["lr"], group["weight_decay"]
            if decay:
                torch._foreach_mul_(params, 1 - lr * decay)
            for index in by_shape.values():
                wide = [updates[i] if updates[i].size(0) <= updates[i].size(1) else updates[i].mT for i in index]
                ortho = orthogonalize(torch.stack(wide), group["ns_steps"], group["ns_coefficients"], group["eps"])
                ortho = ortho.to(params[index[0]].dtype)  # one conversion for the batch, not one per matrix
                for i, o in zip(index, ortho.unbind(0)):
                    rows, cols = params[i].shape
                    params[i].add_(o if rows <= cols else o.mT, alpha=-lr * max(1.0, rows / cols) ** 0.5)
        return loss


# ----------------------------------------------------------------------------- Muon beside AdamW in a GPT

def muon_param_names(model: torch.nn.Module) -> list[str]:
    """The weights Muon trains: the 2-D matrices inside the transformer blocks (attention and MLP); AdamW keeps
    the rest (embeddings, head, gains, biases)."""
    return [name for name, p in model.named_parameters() if name.startswith("transformer.h.") and p.dim() == 2]


class Optimizers:
    """Several optimizers that act as one (Muon for the block matrices, AdamW for the rest): step, zero_grad,
    param_groups and state_dict cover all of them, so the training loop and GradScaler need not know."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self):
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def step(self, closure=None):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict):
        for opt, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            opt.load_state_dict(state)
