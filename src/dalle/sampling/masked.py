"""Masked-token diffusion over an image tokenizer's grid (MUSE; aMUSEd in diffusers).

Training corrupts a grid by masking a share ``cos(u pi / 2)`` of its tokens, ``u`` uniform
per image (:func:`mask_tokens`), as aMUSEd's training script does; sampling is
diffusers' ``AmusedScheduler``: from a fully masked grid, each step draws every masked
token (at ``temperature``, as the DALL-E sampler's) and masks again the least confident
draws (with Gumbel noise on the confidence, annealed from ``confidence_noise[0]`` to
``confidence_noise[1]``: aMUSEd's ``temperature``), fewer at every step on the cosine
schedule, until none is left.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from dalle.models.token_decoder import TokenDecoder
from dalle.sampling.diffusion import guided_prediction
from dalle.sampling.sampler import Generators

if TYPE_CHECKING:  # diffusers takes seconds to import: only where sampling starts
    from diffusers import AmusedScheduler


def masking_ratio(u: torch.Tensor) -> torch.Tensor:
    """The share of tokens masked at diffusion time ``u`` in [0, 1]: all at 0, none at 1."""
    return torch.cos(u * math.pi / 2)


def mask_tokens(
    tokens: torch.Tensor, mask_id: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(corrupted, masked)``: ``tokens`` ``[B, h, w]`` with a share ``masking_ratio(u)``
    of each image's positions (``u`` uniform, at least one position) replaced by
    ``mask_id``, and which ones ``[B, h, w]`` bool. Drawn on the CPU: the same on any
    device."""
    rows, positions = len(tokens), tokens[0].numel()
    ratio = masking_ratio(torch.rand(rows, generator=generator))  # [B]
    chance = torch.rand(rows, positions, generator=generator)
    masked = chance < ratio[:, None]
    # The position of each row's smallest draw is masked whatever the ratio: no image
    # trains on nothing.
    masked[torch.arange(rows), chance.argmin(dim=1)] = True
    masked = masked.view_as(tokens).to(tokens.device)
    return torch.where(masked, mask_id, tokens), masked


@torch.no_grad()
def sample_tokens(decoder: TokenDecoder, text: torch.Tensor, image_embed: torch.Tensor,
                  steps: int = 12, guidance_scale: float = 3.0, generator: Generators = None,
                  temperature: float = 1.0, confidence_noise: tuple[float, float] = (2.0, 0.0),
                  on_step: Callable[[int], None] | None = None) -> torch.Tensor:  # fmt: skip
    """Token grids ``[B, h, w]`` for CLIP image embeddings ``[B, D]`` and captions ``[B, L]``
    in ``steps`` steps; guidance mixes the logits with both conditions and with neither.
    ``generator``: one, or one per row (each row then depends on its own only)."""
    from diffusers import AmusedScheduler

    c = decoder.config
    scheduler = AmusedScheduler(mask_token_id=c.mask_id)
    scheduler.set_timesteps(steps, temperature=confidence_noise)
    tokens = torch.full((len(text), c.image_size, c.image_size), c.mask_id, device=text.device)
    for i, t in enumerate(scheduler.timesteps):
        logits = guided_prediction(decoder, (tokens,), text, image_embed, guidance_scale)
        logits = logits / temperature
        tokens = _step(scheduler, logits, int(t), tokens, generator)
        if on_step is not None:
            on_step(i)
    return tokens


def _step(scheduler: AmusedScheduler, logits: torch.Tensor, t: int, tokens: torch.Tensor,
          generator: Generators) -> torch.Tensor:  # fmt: skip
    """One scheduler step for the batch, or row by row with a generator each."""
    if generator is None or isinstance(generator, torch.Generator):
        return scheduler.step(logits, t, tokens, generator=generator).prev_sample
    if len(generator) != len(tokens):
        raise ValueError(f"{len(generator)} generators for {len(tokens)} rows")
    rows = [scheduler.step(logits[i : i + 1], t, tokens[i : i + 1], generator=g).prev_sample
            for i, g in enumerate(generator)]  # fmt: skip
    return torch.cat(rows)
