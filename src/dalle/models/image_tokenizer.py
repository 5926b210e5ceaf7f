"""The one interface every later stage uses to turn images into tokens and back.

Transformer training, ``generate``, ``score``, the demo and the metrics see an image
tokenizer only through :class:`ImageTokenizer`; a saved one is a folder whose
``config.json`` names its kind, and :func:`load_image_tokenizer` opens any kind. A new
kind is a model class with these members, added to :data:`IMAGE_TOKENIZERS`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from dalle.models.dvae import DiscreteVAE
from dalle.models.fsq import FSQTokenizer
from dalle.models.pretrained import model_type

IMAGE_TOKENIZERS: dict[str, type] = {cls.__name__: cls for cls in (DiscreteVAE, FSQTokenizer)}


@runtime_checkable
class ImageTokenizer(Protocol):
    @property
    def vocab_size(self) -> int: ...

    @property
    def downsample(self) -> int:
        """Image pixels per token, along each side."""
        ...

    def token_grid(self, image_size: int) -> int:
        """Tokens along each side of an ``image_size`` image."""
        ...

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, 3, H, W]`` -> tokens, long ``[B, h, w]``."""
        ...

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, h, w]`` -> uint8 images ``[B, 3, H, W]``."""
        ...


def load_image_tokenizer(
    directory: str | Path,
    device: str | torch.device = "cpu",
    refine_steps: int | None = None,
    refine_precision: str | None = None,
):
    """The image tokenizer saved in ``directory``, whatever its kind, in eval mode and
    without gradients. ``refine_steps`` and ``refine_precision`` override how many steps
    its encoding searches past its encoder's guess, and in what precision (its config's;
    models/refinement.py)."""
    kind = model_type(directory, "an image tokenizer")
    if kind not in IMAGE_TOKENIZERS:
        raise ValueError(
            f"{directory} holds a {kind}, not an image tokenizer ({', '.join(IMAGE_TOKENIZERS)})"
        )
    model = IMAGE_TOKENIZERS[kind].from_pretrained(directory, device=device)
    overrides = {"refine_steps": refine_steps, "refine_precision": refine_precision}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        model.config = replace(model.config, **overrides)  # validates them
    return model.requires_grad_(False)


def load_latent_tokenizer(directory: str | Path, device: str | torch.device) -> FSQTokenizer:
    """The image tokenizer in ``directory`` as a latent decoder's: one whose codes are
    continuous (FSQ's, in [-1, 1]), which a diffusion model can draw; a dVAE's are one-hot."""
    model = load_image_tokenizer(directory, device)
    if not isinstance(model, FSQTokenizer):
        raise ValueError(f"{directory} holds a {type(model).__name__}: a latent decoder needs an "
                         "FSQ image tokenizer, whose codes are continuous")  # fmt: skip
    return model
