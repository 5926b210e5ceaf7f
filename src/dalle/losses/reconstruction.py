"""The FSQ tokenizer's objective: the reconstruction error alone (no codebook terms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(
    logits: torch.Tensor, images: torch.Tensor, gradient_weight: float = 0.0
) -> torch.Tensor:
    """Mean squared error of the reconstruction's [0, 1] pixels against uint8 ``images``
    ``[B, C, H, W]``, plus ``gradient_weight`` times the error of their differences
    between neighbouring pixels (:func:`gradient_difference`).

    (An L1 error and an extra weight near object boundaries were tried on Shapes World:
    both let the codes collapse onto the white background; BENCHMARKS.md.)
    """
    pixels, target = torch.sigmoid(logits.float()), images.float() / 255
    loss = F.mse_loss(pixels, target)
    if gradient_weight:
        loss = loss + gradient_weight * gradient_difference(pixels, target)
    return loss


def gradient_difference(pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error between the horizontal and vertical pixel differences of two images
    ``[B, C, H, W]`` (the "gradient difference loss" of Mathieu et al. 2016). Squared
    error on pixels alone is satisfied by a blur; this term asks for the edges too, such
    as the thin gap between two objects that a blur fills in."""

    def dx(x: torch.Tensor) -> torch.Tensor:
        return x[..., :, 1:] - x[..., :, :-1]

    def dy(x: torch.Tensor) -> torch.Tensor:
        return x[..., 1:, :] - x[..., :-1, :]

    return F.mse_loss(dx(pixels), dx(target)) + F.mse_loss(dy(pixels), dy(target))
