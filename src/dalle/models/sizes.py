"""How large a model is: parameters per part, and training memory when sharded."""

from __future__ import annotations

from torch import nn

from dalle.models.protocol import TrainableModel


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level part, and in total."""
    if hasattr(model, "parameter_counts"):
        return model.parameter_counts()  # type: ignore[operator]
    return {"total": sum(p.numel() for p in model.parameters())}


def sharded_memory(model: nn.Module, gpus: int) -> dict[str, float]:
    """Bytes per GPU for training ``model`` with FSDP2 over ``gpus`` ranks under this
    project's policy: fp32 master weights, fp32 gradients and AdamW's two fp32 moments,
    all sharded evenly; plus the bf16 copies of whole blocks that exist while a block
    runs (the one computing and the next one, prefetched). Activations are not counted:
    they depend on the batch (activation checkpointing keeps one block's at a time)."""
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, not {gpus}")
    total = sum(p.numel() for p in model.parameters())
    blocks = model.residual_blocks() if isinstance(model, TrainableModel) else []
    largest_block = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=total)
    memory = {
        "weights_fp32": 4 * total / gpus,
        "gradients_fp32": 4 * total / gpus,
        "optimizer_adamw_fp32": 8 * total / gpus,
        "gathered_blocks_bf16": 2 * 2 * largest_block if gpus > 1 else 0.0,
    }
    memory["total"] = sum(memory.values())
    return memory
