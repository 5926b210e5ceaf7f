"""Metrics for generated images in a CLIP's feature space.

- CLIP score: ``100 * max(cos(image, prompt), 0)`` averaged over images, as in Hessel et
  al. (2021) without their 2.5 rescaling and as torchmetrics reports it.
- Frechet CLIP distance: the Frechet distance between Gaussians fitted to the image
  features of generated and of real images (FID's formula in a CLIP's space instead of
  Inception's). Only comparable between runs measured with the same CLIP.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from dalle.sampling.rerank import CLIPScorer


def image_features(scorer: CLIPScorer, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Unit-norm CLIP features of uint8 images ``[N, 3, H, W]`` as float64 ``[N, D]``."""
    out = [scorer.image_features(chunk).double().cpu() for chunk in images.split(batch_size)]
    return torch.cat(out).numpy()


def clip_score(scorer: CLIPScorer, images: torch.Tensor, prompts: list[str]) -> float:
    cosines = torch.cat(
        [scorer(i, list(p)) for i, p in zip(images.split(256), _chunks(prompts, 256), strict=True)]
    )
    return float(100 * cosines.clamp_min(0).mean())


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` for features ``[N, D]``."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least two feature vectors per set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # a singular product: nudge both diagonals, as FID does
        offset = np.eye(len(cov_a)) * 1e-6
        root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real  # imaginary parts are numerical noise for these PSD products
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
