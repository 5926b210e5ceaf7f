"""The FSQ tokenizer's objective: the reconstruction error alone (no codebook terms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the reconstruction's [0, 1] pixels against uint8 ``images``.

    (An L1 error and an extra weight near object boundaries were tried on Shapes World:
    both let the codes collapse onto the white background; BENCHMARKS.md.)
    """
    return F.mse_loss(torch.sigmoid(logits.float()), images.float() / 255)
