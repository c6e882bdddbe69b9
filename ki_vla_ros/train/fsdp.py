"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the trainer (`parallel: fsdp` under torchrun).

Sharding units: every vision block, every backbone block, every expert block, then the root
(`_LossModule` around the model: embeddings, projections, heads, final norms). The mixture
transformer never calls a `Block`'s forward(); it calls `Block.qkv` before the shared attention
and `Block.finish` after it, so both are registered as FSDP forward methods
(`register_fsdp_forward_method`): each half all-gathers the block's parameters, and the backward
reduce-scatters the gradients of the parameters that half used (the halves use disjoint
parameters: qkv = attn_norm + q/k/v, finish = o_proj + mlp_norm + mlp).

Checkpoints keep the single-process format: full (unsharded) state dicts are gathered to rank 0
(`get_model_state_dict` / `get_optimizer_state_dict`, `full_state_dict=True, cpu_offload=True`),
the optimiser state is re-keyed from parameter names to the integer indices
`torch.optim.Optimizer.state_dict()` uses, and loading does the reverse
(`set_optimizer_state_dict`; model weights are loaded before sharding). A checkpoint written
under FSDP therefore loads into a single-process model, a DDP run, or an FSDP run alike.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

PREFIX = "model."  # the root unit is _LossModule(model): its parameter names start with "model."


def shard(root: nn.Module, model, device: torch.device, world: int) -> nn.Module:
    """fully_shard the blocks of `model` (a KIVLA), then `root` (which holds `model`). In place."""
    mesh = init_device_mesh(device.type, (world,))
    for blk in model.vision.blocks:
        fully_shard(blk, mesh=mesh)
    for blk in (*model.transformer.backbone, *model.transformer.expert):
        fully_shard(blk, mesh=mesh)
        register_fsdp_forward_method(blk, "qkv")
        register_fsdp_forward_method(blk, "finish")
    fully_shard(root, mesh=mesh)
    return root


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a collective: every rank calls it), a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The full tensor `value` (present on every rank) laid out like `param` (no communication)."""
    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements,
                                 src_data_rank=None)
    return value.to(param.device)


def full_model_state(root: nn.Module, cpu_offload: bool = True) -> dict[str, torch.Tensor]:
    """The model's full state dict, KIVLA key names (collective; with cpu_offload only rank 0 gets it)."""
    sd = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload))
    return {k.removeprefix(PREFIX): v.detach().contiguous() for k, v in sd.items()}


def _param_fqns(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> list[str]:
    return [PREFIX + names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_optimizer_state(root: nn.Module, optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """The optimiser's full state dict in `Optimizer.state_dict()` form (integer parameter indices)
    on rank 0 ({} elsewhere). Collective."""
    osd = get_optimizer_state_dict(root, optimizer,
                                   options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not osd:
        return {}
    fqns = _param_fqns(optimizer, names)
    state = {i: dict(osd["state"][f]) for i, f in enumerate(fqns) if f in osd["state"]}
    groups, i = [], 0
    for g in optimizer.param_groups:
        packed = {k: v for k, v in g.items() if k != "params"}
        packed["params"] = list(range(i, i + len(g["params"])))
        i += len(g["params"])
        groups.append(packed)
    return {"state": state, "param_groups": groups}


def load_optimizer_state(root: nn.Module, optimizer: torch.optim.Optimizer, names: dict[int, str],
                         sd: dict) -> None:
    """Load a full `Optimizer.state_dict()`-form state (read by every rank) into the sharded optimiser."""
    fqns = _param_fqns(optimizer, names)
    state = {fqns[int(i)]: v for i, v in sd["state"].items()}
    groups = []
    for g in sd["param_groups"]:
        packed = {k: v for k, v in g.items() if k != "params"}
        packed["params"] = [fqns[int(i)] for i in g["params"]]
        groups.append(packed)
    set_optimizer_state_dict(root, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
