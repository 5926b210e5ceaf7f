"""The FSQ tokenizer's objective: the reconstruction error alone (no codebook terms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(
    logits: torch.Tensor, images: torch.Tensor, gradient_weight: float = 0.0
) -> torch.Tensor:
    """Binary cross-entropy of the decoder's pixel ``logits`` against uint8 ``images``
    ``[B, C, H, W]`` read as [0, 1] targets, plus ``gradient_weight`` times the error of
    the sigmoid pixels' differences between neighbouring pixels (:func:`gradient_difference`).

    Cross-entropy, not squared error on the sigmoid: its gradient, sigmoid - target, does
    not vanish where the sigmoid saturates. With squared error a decoder saturated on the
    white background got no gradient back and the codes collapsed onto one, on 4 of 5
    seeds of the demo's config (BENCHMARKS.md).
    """
    logits, target = logits.float(), images.float() / 255
    loss = F.binary_cross_entropy_with_logits(logits, target)
    pixels = torch.sigmoid(logits)
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
