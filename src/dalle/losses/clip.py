"""CLIP's contrastive objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(
    logits: torch.Tensor,
    images_per_group: int | None = None,
    texts_per_group: int | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy over similarity logits: each image against every caption,
    and each image's own caption against every image. About ln(B) at initialisation.

    ``logits`` is ``[B, B]`` (image i's caption is text i), or, with extra captions
    (hard negatives) after each group's own, ``[G b, G t]``: the images of ``G`` groups
    (ranks) of ``b``, and texts in groups of ``t >= b`` whose first ``b`` are the
    images' captions. Extra captions only ever serve as wrong answers.
    """
    images = torch.arange(len(logits), device=logits.device)
    b = images_per_group or len(logits)
    t = texts_per_group or b
    own_caption = images // b * t + images % b  # [G b]: each image's caption's column
    to_text = F.cross_entropy(logits, own_caption)
    to_image = F.cross_entropy(logits[:, own_caption].T, images)
    return (to_text + to_image) / 2
