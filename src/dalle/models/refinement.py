"""Encoding by search (analysis by synthesis): an image tokenizer's encoder guesses each
image's latents in one pass, amortised over its training images; a few optimizer steps on
one image's own latents, toward a lower reconstruction error through the tokenizer's own
decoder, find codes it decodes better. On Shapes World's colour-shape pairs that no
training image held, the encoder's guess decodes toward the colours it knows while
better codes exist (BENCHMARKS.md). As in neural image compression's latent refinement
(Campos et al. 2019, "Content Adaptive Optimization for Neural Image Compression").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dalle.precision import PRECISIONS, autocast_context

# latents -> (codes, pixels): the discrete codes the latents stand for, in whatever form
# the tokenizer keeps them, and the decoder's [0, 1] pixels ``[B, C, H, W]`` for them,
# differentiable in the latents (through a straight-through estimator).
Render = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def check_refine_settings(steps: int, lr: float, precision: str) -> None:
    """A model config's ``refine_steps``, ``refine_lr`` and ``refine_precision``: a
    ValueError naming the one that cannot work."""
    if steps < 0 or lr <= 0:
        raise ValueError(f"refine_steps must be >= 0 and refine_lr > 0, not {steps} and {lr}")
    if precision not in PRECISIONS:
        choices = ", ".join(PRECISIONS)
        raise ValueError(f"unknown refine_precision {precision!r}; use one of {choices}")


@torch.no_grad()
def refine_codes(
    latents: torch.Tensor,
    render: Render,
    target: torch.Tensor,
    steps: int,
    lr: float,
    precision: str = "fp32",
) -> torch.Tensor:
    """Adam on each image's ``latents [B, ...]`` for ``steps`` steps, toward a lower mean
    squared error of ``render``'s pixels against ``target [B, C, H, W]`` in [0, 1]; returns
    the codes of each image's best step (the encoder's guess is step 0, so no image ends
    worse than it began). ``render`` runs under ``precision``'s autocast (bf16 halves its
    time on a CPU with bf16 and loses nothing measurable, BENCHMARKS.md); the latents,
    their optimizer and the error stay in fp32."""
    latents = latents.detach().float().requires_grad_(True)
    optimizer = torch.optim.Adam([latents], lr=lr)
    best_error = torch.full((len(target),), math.inf, device=target.device)  # [B]
    best: torch.Tensor | None = None
    for step in range(steps + 1):
        with torch.enable_grad(), autocast_context(latents.device, precision):
            codes, pixels = render(latents)
            error = (pixels.float() - target).square().flatten(1).mean(dim=1)  # [B]
            total = error.sum()  # each image's error moves only its own latents
        better = error.detach() < best_error
        best_error = torch.where(better, error.detach(), best_error)
        codes = codes.detach()
        where = better.view(-1, *[1] * (codes.ndim - 1))
        best = codes if best is None else torch.where(where, codes, best)
        if step < steps:
            # Only the latents' gradient: the weights' is neither computed nor kept.
            (latents.grad,) = torch.autograd.grad(total, latents)
            optimizer.step()
    assert best is not None
    return best
