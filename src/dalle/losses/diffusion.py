"""The diffusion stages' objective: squared error of the predicted clean sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clean_sample_loss(prediction: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the x0 prediction (the paper's prior objective), in fp32."""
    return F.mse_loss(prediction.float(), clean.float())
