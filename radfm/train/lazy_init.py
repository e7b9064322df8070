"""Sharded runs without a full model on every rank: rank 0 builds the model (seeded, ``init_from`` loaded, as
any run does); every other rank builds it with its parameters on the meta device (no storage), and after
sharding receives its slice of each parameter from rank 0, one tensor at a time.

Why: every rank used to build the whole fp32 model before ``fully_shard`` dropped all but its slice. For
``base`` that is 52.5 GB of host memory per rank, 420 GB on an 8-GPU node at once (BENCHMARKS.md, "The 13B
plan"); with this, rank 0 holds the model and every other rank a slice plus the largest tensor in transit.

Buffers stay real on every rank (they are built by the modules' own code: rotary frequencies, position
tables); they are broadcast from rank 0 like the parameters, so the ranks agree on every tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Modules built inside this create their parameters on the meta device (shape, dtype and
    ``requires_grad`` kept, no storage); buffers are created as usual."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def holds_meta(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` has no storage (built under :func:`params_on_meta`)."""
    return any(p.is_meta for p in module.parameters())


def any_rank_lazy(module: nn.Module, group: Any = None) -> bool:
    """Whether any rank built ``module`` lazily (a collective: every rank must call it)."""
    import torch.distributed as dist

    flag = torch.tensor([1 if holds_meta(module) else 0], dtype=torch.int32)
    if dist.get_backend(group) == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())


def full_parameters(module: nn.Module) -> dict[str, torch.Tensor] | None:
    """Rank 0's parameters by name, taken before sharding (the references keep the full tensors until
    :func:`materialize_from_rank0` has sent them); None on the other ranks."""
    import torch.distributed as dist

    if dist.get_rank() != 0:
        return None
    return {name: p.detach() for name, p in module.named_parameters()}


def materialize_from_rank0(module: nn.Module, full: dict[str, torch.Tensor] | None, mesh: Any) -> None:
    """After ``fully_shard``: give every rank's shards rank 0's values, and every buffer rank 0's.

    A rank that built lazily first allocates its shards (``to_empty``, uninitialised). Then, parameter by
    parameter in the same order on every rank, rank 0's full tensor is scattered over the mesh
    (``distribute_tensor`` with rank 0 as the source): a rank receives only its slice, and holds one full-size
    receive buffer at a time. Under NCCL each tensor goes through the GPU alone, never the whole model.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, distribute_tensor

    device = torch.device(mesh.device_type) if mesh.device_type == "cpu" else torch.device(
        mesh.device_type, torch.cuda.current_device())
    group = mesh.get_group()
    if holds_meta(module):
        module.to_empty(device=device)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if full is not None:
                source = full[name].to(device)
            else:
                source = torch.empty(param.shape, dtype=param.dtype, device=device)
            if not isinstance(param, DTensor):  # shard_module shards every parameter of the module
                raise TypeError(f"{name} was left unsharded: a lazily built rank has no value for it")
            shard = distribute_tensor(source, param.device_mesh, param.placements, src_data_rank=0)
            param.to_local().copy_(shard.to_local())
            del source
        for buffer in module.buffers():
            staged = buffer.data.to(device)
            dist.broadcast(staged, src=dist.get_global_rank(group, 0), group=group)
            buffer.data.copy_(staged)
