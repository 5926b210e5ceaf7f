"""The DALL-E transformer's objective: cross-entropy of caption and image tokens,
weighted 1/8 and 7/8 as in the paper (Ramesh et al. 2021, section 2.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def text_image_loss(
    text_logits: torch.Tensor,
    text_targets: torch.Tensor,
    image_logits: torch.Tensor,
    image_targets: torch.Tensor,
    text_weight: float = 1 / 8,
) -> dict[str, torch.Tensor]:
    """``text_weight * CE(text) + (1 - text_weight) * CE(image)``, each a mean over its
    tokens (in fp32). Logits ``[B, n, V]``, targets ``[B, n]``. Returns the weighted
    ``loss`` and both parts."""
    text_loss = F.cross_entropy(text_logits.flatten(0, 1).float(), text_targets.flatten())
    image_loss = F.cross_entropy(image_logits.flatten(0, 1).float(), image_targets.flatten())
    loss = text_weight * text_loss + (1 - text_weight) * image_loss
    return {"loss": loss, "text_loss": text_loss, "image_loss": image_loss}
