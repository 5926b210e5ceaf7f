"""The diffusion stages' objective: squared error of the predicted clean sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clean_sample_loss(prediction: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the x0 prediction (the paper's prior objective), in fp32."""
    return F.mse_loss(prediction.float(), clean.float())


def masked_token_loss(
    logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the masked positions only (MUSE's objective), in fp32: ``logits``
    ``[B, V, h, w]``, the clean ``tokens`` ``[B, h, w]``, ``masked`` ``[B, h, w]`` bool."""
    return F.cross_entropy(logits.float().permute(0, 2, 3, 1)[masked], tokens[masked])
