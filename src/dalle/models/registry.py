"""Every named model preset, across model families."""

from __future__ import annotations

from torch import nn

from dalle.models.clip import CLIP, CLIP_PRESETS
from dalle.models.dalle_transformer import DALLE_PRESETS, DALLETransformer
from dalle.models.dvae import DVAE_PRESETS, DiscreteVAE


def preset_names() -> list[str]:
    return sorted([*DVAE_PRESETS, *DALLE_PRESETS, *CLIP_PRESETS])


def build_preset(name: str, device: str = "meta") -> nn.Module:
    """The preset's model; on the meta device by default, so nothing is allocated."""
    import torch

    if name in DVAE_PRESETS:
        with torch.device(device):
            return DiscreteVAE(DVAE_PRESETS[name])
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
