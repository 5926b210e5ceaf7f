"""Encoding by search: each image's latents optimised through the tokenizer's own decoder,
for both kinds of image tokenizer."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from dalle.models.dvae import DiscreteVAE, DVAEConfig
from dalle.models.fsq import FSQConfig, FSQTokenizer, indices_to_codes


def _fsq() -> FSQTokenizer:
    return FSQTokenizer(FSQConfig(levels=[5, 5, 5], downsample=4, hidden_width=8))


def _dvae() -> DiscreteVAE:
    return DiscreteVAE(DVAEConfig(vocab_size=32, group_count=3, hidden_width=8, blocks_per_group=1))


def _error(model, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image squared error ``[B]`` of the decoder's [0, 1] pixels for ``tokens``."""
    if isinstance(model, FSQTokenizer):
        codes = indices_to_codes(tokens, model.levels).movedim(-1, 1)
        pixels = torch.sigmoid(model.decoder(codes))
    else:
        one_hot = F.one_hot(tokens, model.config.vocab_size).permute(0, 3, 1, 2).float()
        pixels = model.stats_to_images(model.decode_stats(one_hot))
    return (pixels - images.float() / 255).square().flatten(1).mean(dim=1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("build", [_fsq, _dvae], ids=["fsq", "dvae"])
def test_refined_encoding_lowers_each_images_error_and_leaves_the_weights_alone(
    build, precision: str
) -> None:
    torch.manual_seed(0)
    model = build()
    # Plain colours: an untrained decoder cannot draw noise, but codes that shift its colour
    # exist.
    colours = torch.randint(0, 256, (6, 3, 1, 1), dtype=torch.uint8)
    images = colours.expand(6, 3, 16, 16).contiguous()
    guess = model.encode(images)
    model.config = replace(model.config, refine_steps=20, refine_lr=0.2, refine_precision=precision)
    refined = model.encode(images)
    assert refined.shape == guess.shape and refined.dtype == torch.long
    assert refined.min() >= 0 and refined.max() < model.vocab_size
    before, after = _error(model, guess, images), _error(model, refined, images)
    assert (after <= before + 1e-6).all()  # each image keeps its best step
    assert after.mean() < 0.95 * before.mean()  # and the search finds better codes
    assert all(p.grad is None for p in model.parameters())  # only the latents had a gradient
    with pytest.raises(ValueError, match="refine_steps"):
        replace(model.config, refine_steps=-1)
    with pytest.raises(ValueError, match="refine_precision"):
        replace(model.config, refine_precision="fp8")
