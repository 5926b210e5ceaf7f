"""What training asks of a model, as typed protocols rather than attribute probes.

Every model of this project names its repeated residual blocks (the units that
activation checkpointing, compilation and FSDP2 sharding work on) and the parameters
that weight decay spares. A model that can be built on the meta device (no memory) also
initialises itself with ``init_weights()`` once its weights exist, after sharding.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class TrainableModel(Protocol):
    def residual_blocks(self) -> list[nn.Module]:
        """The repeated blocks, in order."""
        ...

    def no_weight_decay(self) -> set[str]:
        """Names of parameters with two or more dimensions that do not decay anyway."""
        ...


@runtime_checkable
class MetaBuildable(Protocol):
    def init_weights(self) -> None:
        """Initialises every parameter and buffer in place; a no-op while on meta."""
        ...


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's two parameter groups under the project's one rule: matrices and kernels
    decay; vectors (gains, biases, a temperature) do not, and neither do the parameters
    the model names in ``no_weight_decay()`` (DALL-E's embeddings, as in the paper).
    Returns ``[decay group, no-decay group]``."""
    spared = model.no_weight_decay() if isinstance(model, TrainableModel) else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and _clean(name) not in spared else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip


def _clean(name: str) -> str:
    from dalle.models.init import clean_name

    return clean_name(name)
