"""Sampling: logit filters, guidance, and cached decoding against the full forward pass."""

from __future__ import annotations

import pytest
import torch

from dalle.models.dalle_transformer import DALLE_PRESETS, DALLEConfig, DALLETransformer
from dalle.sampling.sampler import (
    SamplingConfig,
    draw_tokens,
    filter_logits,
    guided_logits,
    sample_image_tokens,
)
from dalle.tokenizers.text import PAD_ID


def test_filter_logits() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.01)).tolist() == [[False, True, True, True]]
    assert torch.equal(filter_logits(logits), logits)


def test_guidance_mixes_log_probabilities() -> None:
    c, u = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.allclose(guided_logits(c, u, 1.0), c.log_softmax(-1))
    assert torch.allclose(guided_logits(c, u, 0.0), u.log_softmax(-1))


def _model(attention: list[str] | None = None) -> DALLETransformer:
    torch.manual_seed(0)
    base = DALLE_PRESETS["dalle-tiny"]
    config = DALLEConfig(**{**base.__dict__, "attention": attention or base.layer_attention})
    return DALLETransformer(config).eval()


@pytest.mark.parametrize("attention", [None, ["full", "column", "row", "conv"]])
def test_cached_greedy_sampling_matches_the_full_forward(attention) -> None:
    model = _model(attention)
    text = torch.randint(2, 64, (3, 8))
    text[:, 4:] = PAD_ID
    tokens = sample_image_tokens(model, text, SamplingConfig(top_k=1))
    assert tokens.shape == (3, 16)
    _, image_logits = model(text, tokens)
    assert torch.equal(image_logits.argmax(dim=-1), tokens)


def _seeded_draws(model, text: torch.Tensor, config: SamplingConfig, **options) -> torch.Tensor:
    """Image tokens drawn with a fixed seed, the sampler's ``options`` varying."""
    return sample_image_tokens(model, text, config, generator=torch.Generator().manual_seed(3),
                               **options)  # fmt: skip


@pytest.mark.parametrize("attention", [None, ["full", "column", "row", "conv"]])
def test_fixed_shape_steps_give_the_growing_cache_s_logits_and_draws(attention) -> None:
    """The CUDA-graph step (attention over the whole zero-filled cache through a mask
    row) computes what the growing-cache step computes, guided and primed too."""
    model = _model(attention)
    text = torch.randint(2, 64, (3, 8))
    text[:, 5:] = PAD_ID
    prime = torch.randint(0, 32, (3, 2))
    for config in (SamplingConfig(), SamplingConfig(guidance_scale=3.0, top_k=8)):
        eager, fixed = (_seeded_draws(model, text, config, prime=prime, cuda_graph=graph)
                        for graph in (False, True))  # fmt: skip
        assert torch.equal(eager, fixed)
    cache = model.new_cache(3, text.device, torch.float32)
    growing = model.new_cache(3, text.device, torch.float32)
    image = torch.randint(0, 32, (3, 4))
    model(text, image[:, :1], cache=cache)
    model(text, image[:, :1], cache=growing)
    for j in range(1, 4):
        _, fixed = model(None, image[:, j : j + 1], cache=cache, start=torch.tensor(j))
        _, grown = model(None, image[:, j : j + 1], cache=growing, start=j)
        assert torch.allclose(fixed, grown, atol=1e-5)
    with pytest.raises(ValueError, match="one step"):
        model(None, image[:, :2], cache=cache, start=torch.tensor(1))


def test_compiled_fixed_shape_step_draws_the_eager_step_s_tokens() -> None:
    """``compile_step`` (torch.compile of the fixed-shape step, before the CUDA graph
    captures it on a GPU) changes kernels, not draws; it refuses the growing cache."""
    model = _model(["full", "column", "row", "conv"])
    text = torch.randint(2, 64, (2, 8))
    config = SamplingConfig(guidance_scale=3.0)
    eager, compiled = (_seeded_draws(model, text, config, cuda_graph=True, compile_step=c)
                       for c in (False, True))  # fmt: skip
    assert torch.equal(eager, compiled)
    with pytest.raises(ValueError, match="needs cuda_graph"):
        sample_image_tokens(model, text, config, compile_step=True)


def test_sampling_is_seeded_and_priming_keeps_the_given_tokens() -> None:
    model = _model()
    text = torch.randint(2, 64, (2, 8))
    a = sample_image_tokens(model, text, generator=torch.Generator().manual_seed(5))
    b = sample_image_tokens(model, text, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    prime = torch.randint(0, 32, (2, 6))
    primed = sample_image_tokens(
        model, text, prime=prime, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(primed[:, :6], prime)


def test_guided_sampling_runs_both_rows_in_one_batch() -> None:
    model = _model()
    text = torch.randint(2, 64, (2, 8))
    rows: list[int] = []
    forward = model.forward
    model.forward = lambda text, image, **kw: (
        rows.append(image.shape[0])
        or forward(  # type: ignore[method-assign]
            text, image, **kw
        )
    )
    tokens = sample_image_tokens(model, text, SamplingConfig(guidance_scale=3.0, top_k=1))
    assert tokens.shape == (2, 16) and tokens.max() < 32
    assert rows == [4] * 16  # conditional and unconditional rows together, every step
    # Greedy guided sampling takes, at each position, the argmax of u + 3 (c - u), as the
    # full forward pass computes it with the caption (c) and with the empty one (u).
    _, conditional = forward(text, tokens)
    _, unconditional = forward(torch.full_like(text, PAD_ID), tokens)
    assert torch.equal(guided_logits(conditional, unconditional, 3.0).argmax(dim=-1), tokens)


def test_draws_with_a_generator_per_row_follow_the_distribution() -> None:
    rows = 20_000
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).expand(rows, -1)
    tokens = draw_tokens(probs, [torch.Generator().manual_seed(i) for i in range(rows)])
    frequency = torch.bincount(tokens, minlength=4) / rows
    assert frequency[3] == 0  # a token of probability 0 is never drawn
    assert torch.allclose(frequency[:3], probs[0, :3], atol=0.015)
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        draw_tokens(probs[:3], [torch.Generator(), torch.Generator()])


def test_a_row_with_its_own_generator_draws_the_same_whatever_shares_its_batch() -> None:
    """What lets a server batch many clients' requests: row 1 alone, or beside others,
    or guided, draws the same tokens from the same generator."""
    model = _model()
    text = torch.randint(2, 64, (3, 8))

    def seeded(*seeds: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    for config in (SamplingConfig(), SamplingConfig(guidance_scale=2.0, top_k=8)):
        together = sample_image_tokens(model, text, config, generator=seeded(0, 1, 2))
        alone = sample_image_tokens(model, text[1:2], config, generator=seeded(1))
        assert torch.equal(together[1:2], alone)
        other = sample_image_tokens(model, text[1:2], config, generator=seeded(5))
        assert not torch.equal(other, alone)
