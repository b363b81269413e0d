"""How the training loop spreads a GPT over its workers: DDP (a full replica per worker) or FSDP2 (parameters,
gradients and AdamW moments sharded over the workers). Pure: torch only; the model never knows which.

- DDP: every worker holds the whole model and optimizer; gradients are all-reduced on the last micro-step.
- FSDP2 (`torch.distributed.fsdp.fully_shard`): one FSDP group per transformer block and one at the root.
  The root group holds the tied wte/lm_head weight, so the one tensor behind both names is sharded once.
  A block's parameters are all-gathered just before its forward and backward and freed after; gradients
  are reduce-scattered, so each worker keeps 1/N of parameters, gradients and optimizer state.

Checkpoints stay nanoGPT's single file whichever is used: `full_state` gathers the full model and optimizer
state dicts (optimizer keyed by parameter index, as torch's own state_dict), and `load_full_state` shards
them back, so a run saved by FSDP workers resumes on any worker count, on DDP, or in nanoGPT itself.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import UserError


class ParallelismError(UserError):
    """A parallelism setting that cannot work with this device or dtype; one line."""


def is_sharded(model: nn.Module) -> bool:
    """Whether fully_shard has been applied to the model (its parameters are DTensors), compiled or not."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def check_fsdp_dtype(dtype: str) -> None:
    if dtype == "float16":
        # FSDP2 shards gradients as DTensors; GradScaler's unscale_ would need the sharded inf checks that
        # only torch's ShardedGradScaler (FSDP1) has. bf16 needs no loss scaling at all.
        raise ParallelismError("parallelism='fsdp' does not support dtype='float16' (it needs loss scaling); "
                               "pass --dtype=bfloat16 (or float32), or --parallelism=ddp")


def mixed_precision_policy(dtype: str):
    """FSDP2's precision for a run's dtype, on any device (gloo on CPU runs bf16 too): bf16 compute with fp32
    master weights and an fp32 gradient reduce-scatter (sums of many bf16 values lose bits); float32 keeps
    fp32 throughout."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if dtype == "bfloat16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: nn.Module, parallelism: str, world_size: int, device: str, dtype: str) -> nn.Module:
    """FSDP2 in place, before the optimizer is built (it must see the sharded parameters); a no-op for DDP
    and for one worker (nothing to shard over)."""
    if parallelism != "fsdp" or world_size == 1:
        return model
    check_fsdp_dtype(dtype)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # each rank initialised its model under its own seed (seed + rank, for dropout); DDP broadcasts rank 0's
    # weights when it wraps the model, fully_shard would shard whatever each rank holds: broadcast first
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if not tensor.is_meta:  # a model built on the meta device gets its weights after sharding
                dist.broadcast(tensor, src=0)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    mesh = init_device_mesh(device_type, (world_size,))  # over the process group Ray or torchrun started
    policy = mixed_precision_policy(dtype)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # the root: wte (tied to lm_head), wpe and ln_f; after the blocks, so each block keeps its own group
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def data_parallel(model: nn.Module, world_size: int, device: str) -> nn.Module:
    """DDP around the (possibly compiled) model when several workers replicate it; FSDP models and single
    workers are returned as they are."""
    if world_size == 1 or is_sharded(model):
        return model
    # the process group is up already (TorchTrainer or torchrun started it: gloo on CPU, nccl on GPUs)
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_index = torch.device(device).index
    on_cuda = device.startswith("cuda") and device_index is not None
    return DDP(model, device_ids=[device_index] if on_cuda else None)


def unwrap_ddp(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return model.module if isinstance(model, DDP) else model


def set_grad_sync(model: nn.Module, sync: bool) -> None:
    """Gradient sync only on the last micro-step: one all-reduce (DDP) or reduce-scatter (FSDP) per iteration."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(model, DDP):
        model.require_backward_grad_sync = sync
        return
    if is_sharded(model):
        getattr(model, "_orig_mod", model).set_requires_gradient_sync(sync)  # torch.compile wraps the FSDP module


# ----------------------------------------------------------------------------- full (consolidated) state

def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's index order (index = position across param_groups)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict), full and on the CPU, on rank 0 (empty elsewhere under FSDP).
    Every rank must call it: gathering the shards is a collective."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options)
    if not model_sd:  # cpu_offload leaves the other ranks empty
        return {}, {}
    # gathered separately, tied names (lm_head.weight = transformer.wte.weight) come back as two copies: point
    # them at one tensor again, so torch.save writes it once, as it does for the replicated model
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        model_sd[name] = model_sd[first.setdefault(id(p), name)]
    # DCP keys optimizer state by parameter name; torch (and nanoGPT's train.py) by index
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    state = {index[name]: value for name, value in optim_sd["state"].items()}
    groups = [dict(g, params=[index[name] for name in g["params"]]) for g in optim_sd["param_groups"]]
    return model_sd, {"state": state, "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict | None,
                    optim_sd: dict | None) -> None:
    """Load full state dicts (as `full_state` returns; every rank passes the same) into a replicated or a
    sharded model: under FSDP each rank keeps its own shard of every tensor."""
    if not is_sharded(model):
        if model_sd is not None:
            model.load_state_dict(model_sd)
        if optimizer is not None and optim_sd is not None:
            optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    if model_sd is not None:
        set_model_state_dict(model, dict(model_sd), options=options)  # a copy: it replaces values with shards
    if optimizer is not None and optim_sd is not None:
        names = _param_names(model, optimizer)
        by_name = {
            "state": {names[int(i)]: value for i, value in optim_sd["state"].items()},
            "param_groups": [dict(g, params=[names[int(i)] for i in g["params"]]) for g in optim_sd["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=options)


def local_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Bytes this worker holds for parameters, gradients and optimizer state, from the local shards."""
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    params = list({id(p): p for p in model.parameters()}.values())  # the tied weight once
    out = {"params": sum(local(p).numel() * local(p).element_size() for p in params),
           "grads": sum(local(p.grad).numel() * local(p.grad).element_size() for p in params if p.grad is not None),
           "optimizer": 0}
    for per_param in optimizer.state.values():
        for value in per_param.values():
            if torch.is_tensor(value) and value.dim() > 0:
                out["optimizer"] += local(value).numel() * local(value).element_size()
    return out
