"""Every named model preset, across model families."""

from __future__ import annotations

from torch import nn

from dalle.models.clip import CLIP, CLIP_PRESETS
from dalle.models.dalle_transformer import DALLE_PRESETS, DALLETransformer
from dalle.models.dvae import DVAE_PRESETS, DiscreteVAE
from dalle.models.fsq import FSQ_PRESETS, FSQTokenizer


def preset_names() -> list[str]:
    return sorted([*DVAE_PRESETS, *FSQ_PRESETS, *DALLE_PRESETS, *CLIP_PRESETS])


def build_preset(name: str, device: str = "meta") -> nn.Module:
    """The preset's model; on the meta device by default, so nothing is allocated."""
    import torch

    if name in DVAE_PRESETS:
        with torch.device(device):
            return DiscreteVAE(DVAE_PRESETS[name])
    if name in FSQ_PRESETS:
        with torch.device(device):
            return FSQTokenizer(FSQ_PRESETS[name])
    if name in DALLE_PRESETS:
        with torch.device(device):
            return DALLETransformer(DALLE_PRESETS[name])
    if name in CLIP_PRESETS:
        with torch.device(device):
            return CLIP(CLIP_PRESETS[name])
    raise ValueError(f"unknown preset {name!r}; choose from {', '.join(preset_names())}")


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level part, and in total."""
    if hasattr(model, "parameter_counts"):
        return model.parameter_counts()  # type: ignore[operator]
    return {"total": sum(p.numel() for p in model.parameters())}


MODEL_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (DiscreteVAE, FSQTokenizer, DALLETransformer, CLIP)
}


def sharded_memory(model: nn.Module, gpus: int) -> dict[str, float]:
    """Bytes per GPU for training ``model`` with FSDP2 over ``gpus`` ranks under this
    project's policy: fp32 master weights, fp32 gradients and AdamW's two fp32 moments,
    all sharded evenly; plus the bf16 copies of whole blocks that exist while a block
    runs (the one computing and the next one, prefetched). Activations are not counted:
    they depend on the batch (activation checkpointing keeps one block's at a time)."""
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, not {gpus}")
    total = sum(p.numel() for p in model.parameters())
    get_blocks = getattr(model, "residual_blocks", None)
    blocks = get_blocks() if callable(get_blocks) else []
    largest_block = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=total)
    memory = {
        "weights_fp32": 4 * total / gpus,
        "gradients_fp32": 4 * total / gpus,
        "optimizer_adamw_fp32": 8 * total / gpus,
        "gathered_blocks_bf16": 2 * 2 * largest_block if gpus > 1 else 0.0,
    }
    memory["total"] = sum(memory.values())
    return memory
