"""Transforms applied to a single-device model before training, kept out of model code.

In torchtitan's order: activation checkpointing, then compilation, then FSDP2 sharding.
Models name their repeated residual blocks through ``residual_blocks()``; every transform
works block by block, so a model needs nothing else to be sharded. A model built on the
meta device (no memory) is sharded first and only then given real, initialised weights:
each rank then only ever holds its share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    checkpoint_wrapper,
)
from torch.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)

from dalle.models.protocol import MetaBuildable, TrainableModel
from dalle.training import distributed

M = TypeVar("M", bound=nn.Module)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelPlan:
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each block (CUDA mostly; slow to start on CPU)
    shard: bool = False  # FSDP2 over every rank of the process group
    # Dtype blocks compute in under sharding (weights are all-gathered in it); gradients
    # are reduced and the optimizer's master weights kept in fp32.
    compute_dtype: torch.dtype = torch.float32


def model_build_device(device: torch.device) -> torch.device:
    """Where a task builds a model that can initialise itself after sharding: on the meta
    device when the run will be sharded (no rank then ever holds the whole model)."""
    return torch.device("meta") if distributed.current().enabled else device


def build_model(model_class: Callable[[Any], M], config: Any, device: torch.device) -> M:
    """``model_class(config)`` built where it will train: on ``device``, or on the meta
    device under torchrun, where ``parallelize`` shards it and then initialises it."""
    with torch.device(model_build_device(device)):
        return model_class(config)


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, the units of checkpointing, compiling and sharding
    (none for a module that is not one of this project's models)."""
    return list(model.residual_blocks()) if isinstance(model, TrainableModel) else []


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for module in root.modules():
        for key, child in module.named_children():
            if child is old:
                module._modules[key] = new
                return
    raise ValueError(f"{type(old).__name__} is not a submodule of {type(root).__name__}")


def apply_activation_checkpointing(model: nn.Module, blocks: list[nn.Module]) -> list[nn.Module]:
    """Recomputes each block's activations in the backward pass instead of storing them.

    Trades about a third more compute for memory that no longer grows with depth. The
    wrapper's state-dict hooks keep parameter names unchanged, so checkpoints and saved
    models do not depend on whether it was applied. Returns the wrapped blocks.
    """
    wrapped = []
    for block in blocks:
        new = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        _replace(model, block, new)
        wrapped.append(new)
    return wrapped


def apply_fsdp(model: nn.Module, blocks: list[nn.Module], compute_dtype: torch.dtype) -> None:
    """FSDP2: every block is one unit whose weights are all-gathered just before it runs
    and freed after; the root unit holds the embeddings, heads and anything else."""
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for index, block in enumerate(blocks):
        # The last block's weights are needed again at once by the backward pass.
        fully_shard(block, mp_policy=policy, reshard_after_forward=index < len(blocks) - 1)
    fully_shard(model, mp_policy=policy)
    for name in ENTRY_POINTS:
        if hasattr(model, name):  # gathers the root's weights around these calls too
            register_fsdp_forward_method(model, name)


# Methods other than ``forward`` that evaluation and inference call on a whole model
# (image tokenizers, CLIP). None may call another, nor be called by ``forward``.
ENTRY_POINTS = ("encode", "decode", "encode_text", "encode_image")


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def parallelize(model: nn.Module, plan: ParallelPlan, device: torch.device) -> nn.Module:
    """Applies ``plan`` in place; a meta-device model is then materialised on ``device``
    and initialised through its ``init_weights()``. Returns the model."""
    blocks = residual_blocks(model)
    if (plan.activation_checkpointing or plan.compile or plan.shard) and not blocks:
        log.warning("%s names no residual blocks: transforms apply to it whole",
                    type(model).__name__)  # fmt: skip
    if plan.activation_checkpointing:
        blocks = apply_activation_checkpointing(model, blocks)
    if plan.compile:
        for block in blocks:
            block.compile()  # in place: parameter names keep no "_orig_mod." prefix
    if plan.shard:
        apply_fsdp(model, blocks, plan.compute_dtype)
    if any(p.is_meta for p in model.parameters()):
        if not isinstance(model, MetaBuildable):
            raise TypeError(f"{type(model).__name__} was built on the meta device but has no "
                            "init_weights() to initialise it after sharding")  # fmt: skip
        model.to_empty(device=device)
        model.init_weights()
    return model


def unsharded_class(model: nn.Module) -> type[nn.Module]:
    """The model's own class: FSDP2 turns a module of class ``X`` into an ``FSDPX``."""
    cls = type(model)
    if issubclass(cls, FSDPModule):
        return next(c for c in cls.__mro__[1:]
                    if issubclass(c, nn.Module) and not issubclass(c, FSDPModule))  # fmt: skip
    return cls


def unsharded_copy(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plain single-device model (built from ``model.config``) holding ``state_dict``:
    what generation loads, whatever sharding trained it."""
    plain = unsharded_class(model)(model.config)  # type: ignore[call-arg]
    plain.load_state_dict(state_dict)
    return plain.eval()
