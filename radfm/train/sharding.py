"""Sharded training (PyTorch FSDP2, ``fully_shard``): which modules are shard units, how they are wrapped.

``trainer=ray trainer.ray.strategy=fsdp`` shards the model over the Ray workers instead of copying it to each
(DDP): each rank holds ``1/world`` of every weight, gradient and AdamW state, and gathers one unit's weights
at a time for its forward and backward. The plan (``trainer.ray.shard``, :class:`ShardPlan`):

- ``policy: blocks`` — one unit per LLaMA decoder layer, per ViT block and for the resampler (the units a 13B
  step gathers one at a time); the remaining weights (embeddings, LM head, the ViT stem, the projection) form
  the root unit, and each objective with weights (a head) is its own root.
- ``activation_checkpointing`` — each unit's forward is recomputed in the backward instead of keeping its
  activations (the forward is wrapped, not the module: the parameter names, and so the checkpoints, stay
  those of the unsharded model). A model built with ``gradient_checkpointing`` checkpoints this way too, even
  with this off: its own checkpointing would wrap FSDP's hooks.
- ``param_dtype`` / ``reduce_dtype`` — mixed precision: weights gathered and computed in ``bfloat16``,
  gradients reduced in ``float32``; the sharded master weights and AdamW states stay ``float32``.

Why FSDP2 through Lightning's ``ModelParallelStrategy`` and not Ray's ``RayFSDPStrategy`` (FSDP1): FSDP2 works
on CPU with gloo (so CI runs the sharded path on 2 CPU workers), keeps parameter names, mixes frozen and
trainable weights in one unit (LoRA on a sharded base), and saves a distributed checkpoint per rank.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

POLICIES = ("blocks",)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class ShardPlan:
    """How a model is sharded (``trainer.ray.shard``); ``param_dtype=None`` computes in the weights' dtype."""

    policy: str = "blocks"
    activation_checkpointing: bool = True
    param_dtype: str | None = "bfloat16"
    reduce_dtype: str | None = "float32"
    reshard_after_forward: bool = True
    # Ranks other than 0 build the model with no weights and get their slices from rank 0 after sharding
    # (radfm.train.lazy_init); off, or a stage that trains before sharding (a vision warm-up): every rank
    # builds the whole model.
    lazy_init: bool = True
    # The dtype the frozen weights are stored in (LoRA's base, a frozen ViT): bfloat16 halves them; null keeps
    # the model's fp32. Trainable weights, their gradients and AdamW states stay fp32 either way.
    frozen_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"trainer.ray.shard.policy={self.policy!r}: choose one of {list(POLICIES)}")
        for key in ("param_dtype", "reduce_dtype", "frozen_dtype"):
            value = getattr(self, key)
            if value is not None and value not in DTYPES:
                raise ValueError(f"trainer.ray.shard.{key}={value!r}: choose one of {sorted(DTYPES)} or null")
        if self.frozen_dtype is not None and DTYPES[self.frozen_dtype] != DTYPES.get(self.param_dtype or ""):
            raise ValueError(f"trainer.ray.shard.frozen_dtype={self.frozen_dtype} needs param_dtype="
                             f"{self.frozen_dtype} (the frozen weights compute in the dtype they are kept in), "
                             f"got param_dtype={self.param_dtype}")

    @classmethod
    def from_dict(cls, given: dict[str, Any] | None) -> ShardPlan:
        given = dict(given or {})
        unknown = sorted(set(given) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"trainer.ray.shard has unknown keys {unknown}: "
                             f"known are {sorted(cls.__dataclass_fields__)}")
        return cls(**given)

    def mixed_precision(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=DTYPES.get(self.param_dtype or ""),
                                    reduce_dtype=DTYPES.get(self.reduce_dtype or ""))


def _decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The LM's decoder layers, found by the class names its Hugging Face model declares unsplittable."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # a peft (LoRA) wrapper
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot shard the language model {type(base).__name__}: it names no decoder layer "
                         "class in _no_split_modules")
    return layers


def shard_units(model: nn.Module, policy: str = "blocks") -> list[nn.Module]:
    """The sub-modules that become FSDP units, innermost first (``model`` is a :class:`RadFMModel`).

    ``blocks``: each ViT block, the resampler, each LM decoder layer (the root unit holds the rest).
    """
    if policy not in POLICIES:
        raise ValueError(f"shard policy {policy!r}: choose one of {list(POLICIES)}")
    return [*model.vision.encoder.blocks, model.vision.resampler, *_decoder_layers(model.lm)]


def _checkpoint_forward(module: nn.Module) -> None:
    """Recompute ``module``'s forward in the backward (non-reentrant). The forward is wrapped, not the module:
    FSDP's hooks (on ``__call__``) stay outside, so the weights are gathered again before the recompute."""
    forward = module.forward

    @functools.wraps(forward)
    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        if not (torch.is_grad_enabled() and module.training):
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = checkpointed  # type: ignore[method-assign]


def _without_builtin_checkpointing(model: nn.Module) -> bool:
    """Switch the model's own checkpointing (``model.gradient_checkpointing``) off: it wraps ``__call__`` and so
    FSDP's hooks, which would run again inside the recomputation. Whether it was on (the plan's then takes its
    place)."""
    was_on = bool(model.vision.encoder.gradient_checkpointing)
    model.vision.encoder.gradient_checkpointing = False
    lm = model.lm.get_base_model() if hasattr(model.lm, "get_base_model") else model.lm
    if getattr(lm, "is_gradient_checkpointing", False) and hasattr(lm, "gradient_checkpointing_disable"):
        lm.gradient_checkpointing_disable()
        was_on = True
    return was_on


def _store_frozen(module: nn.Module, dtype: torch.dtype) -> None:
    """Keep every frozen floating-point parameter of ``module`` in ``dtype`` (before sharding: the shards and
    the checkpoints then hold them so)."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)


def broadcast_from_rank0(module: nn.Module, group: Any = None, device_type: str = "cpu") -> None:
    """Rank 0's weights and buffers on every rank (a rank-local warm-up or seed must not leave ranks apart:
    sharding keeps each rank's own slice). The model is still on the CPU here; under NCCL (a GPU mesh) each
    tensor goes through the GPU one at a time, never the whole model."""
    import torch.distributed as dist

    src = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if device_type == "cpu" or tensor.device.type == device_type:
                dist.broadcast(tensor.data, src=src, group=group)
            else:
                staged = tensor.data.to(device_type)
                dist.broadcast(staged, src=src, group=group)
                tensor.data.copy_(staged)


def shard_module(lit: nn.Module, mesh: Any, plan: ShardPlan) -> None:
    """Shard ``lit.model`` (a :class:`RadFMModel`) and ``lit.objectives``' weights over ``mesh`` (1-D) in place.

    Every parameter ends as a ``DTensor`` sharded on dim 0 (each rank holds ``1/mesh.size()`` of it).
    ``encode`` is registered as a forward method of the root, since the LightningModule calls it directly.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from radfm.train.lazy_init import any_rank_lazy, full_parameters, materialize_from_rank0

    model = lit.model
    # A rank that built its model on the meta device (radfm.train.lazy_init) gets rank 0's values after
    # sharding, a slice at a time; otherwise every rank holds the model and rank 0's copy is broadcast now.
    lazy = any_rank_lazy(lit, mesh.get_group())
    if plan.frozen_dtype:
        _store_frozen(lit, DTYPES[plan.frozen_dtype])
    full = full_parameters(lit) if lazy else None
    if not lazy:
        broadcast_from_rank0(lit, mesh.get_group(), mesh.device_type)
    kwargs = {"mesh": mesh, "mp_policy": plan.mixed_precision()}
    units = shard_units(model, plan.policy)
    # A model built to checkpoint (base's preset) keeps checkpointing, per unit, with FSDP's hooks outside it.
    checkpoint = _without_builtin_checkpointing(model) or plan.activation_checkpointing
    for unit in units:
        if checkpoint:
            _checkpoint_forward(unit)
        fully_shard(unit, reshard_after_forward=plan.reshard_after_forward, **kwargs)
    # The root keeps its gathered weights from the forward to the backward (the default for a root).
    fully_shard(model, **kwargs)
    register_fsdp_forward_method(model, "encode")
    for objective in lit.objectives.values():
        if any(True for _ in objective.parameters()):
            # Heads stay fp32 (they read fp32 pooled features and are a tiny part of the compute).
            fully_shard(objective, mesh=mesh)
            register_fsdp_forward_method(objective, "loss")
    if lazy:
        materialize_from_rank0(lit, full, mesh)
        del full
    log.info("sharded %d units + root over %d ranks (%s)", len(units), mesh.size(), plan)


def local_numel(module: nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model) over ``module``'s parameters."""
    held = total = 0
    for p in module.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        held += local.numel()
        total += p.numel()
    return held, total


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of a sharded ``model`` on rank 0, on CPU; ``{}`` on other ranks.

    A collective: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(model: nn.Module, state: dict[str, torch.Tensor], tokenizer: Any, lora: dict | None) -> Any:
    """A plain :class:`RadFMModel` of ``model``'s config holding ``state`` (for export on rank 0).

    Built on the meta device and filled from ``state`` (no second initialisation of a large model).
    """
    from radfm.model import factory
    from radfm.train.lora import apply_lora

    with torch.device("meta"):
        plain = factory.build_model(model.cfg, tokenizer)
        if lora:
            apply_lora(plain, **lora)
    # Weights kept in another dtype while sharded (frozen_dtype) come back in the model's own: LoRA merges
    # into fp32, not into bf16, where most of a small update would round away.
    own = plain.state_dict()
    state = {k: v.to(own[k].dtype) if k in own and v.dtype != own[k].dtype else v for k, v in state.items()}
    plain.load_state_dict(state, strict=True, assign=True)
    plain.yes_no_offset = float(getattr(model, "yes_no_offset", 0.0))
    return plain


def ray_fsdp_strategy() -> Any:
    """Lightning's FSDP2 strategy (``ModelParallelStrategy``) on Ray Train's workers: pure data parallelism
    over all ranks, the device Ray assigned, and checkpoints written and read at each rank's own path."""
    from pathlib import Path

    import ray.train
    import ray.train.torch
    from lightning.pytorch.strategies import ModelParallelStrategy

    class RayFSDP2Strategy(ModelParallelStrategy):
        """Ray's world as one data-parallel mesh dimension (tensor parallel 1).

        Lightning broadcasts rank 0's checkpoint path so that every rank writes into one folder; each Ray
        worker reports its own temporary folder instead (Ray merges the rank files into one checkpoint), so
        here every rank saves to, and loads from, the path it was given.
        """

        def __init__(self) -> None:
            world = ray.train.get_context().get_world_size()
            super().__init__(data_parallel_size=world, tensor_parallel_size=1, save_distributed_checkpoint=True)

        @property
        def root_device(self) -> torch.device:
            return ray.train.torch.get_device()

        @property
        def distributed_sampler_kwargs(self) -> dict[str, Any]:
            return {"num_replicas": self.world_size, "rank": self.global_rank}

        def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
            with self._own_path():
                super().save_checkpoint(checkpoint, filepath, storage_options)

        def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
            with self._own_path():
                return super().load_checkpoint(checkpoint_path, weights_only)

        @contextmanager
        def _own_path(self) -> Iterator[None]:
            self._keep_path = True
            try:
                yield
            finally:
                self._keep_path = False

        def broadcast(self, obj: Any, src: int = 0) -> Any:
            if getattr(self, "_keep_path", False) and isinstance(obj, (str, Path)):
                return obj  # the checkpoint path: each rank's own (see the class docstring)
            return super().broadcast(obj, src)

    return RayFSDP2Strategy()
