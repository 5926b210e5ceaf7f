"""Tokenizer metrics: pixel error, and code usage over all tokens and foreground ones."""

from __future__ import annotations

import pytest
import torch

from dalle.evaluation.reconstruction import (
    code_usage,
    collapse_message,
    foreground_tokens,
    reconstruction_metrics,
    tokenizer_metrics,
)


def test_code_usage_and_pixel_error() -> None:
    usage = code_usage(torch.tensor([[0, 0], [1, 1]]), vocab_size=4)
    assert usage["codes_used"] == 0.5 and usage["perplexity"] == pytest.approx(2.0)
    a = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    b = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    assert reconstruction_metrics(a, b) == {"mse": 1.0, "psnr": pytest.approx(0.0)}


def test_foreground_usage_is_not_capped_by_the_background_code() -> None:
    """A white image with 4 small objects, each given its own code: over all 64 tokens
    one background code dominates (perplexity ~1.5); over the 4 foreground tokens every
    code is distinct (perplexity 4)."""
    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    tokens = torch.zeros(1, 8, 8, dtype=torch.long)
    for i, (row, col) in enumerate([(1, 1), (1, 6), (6, 1), (6, 6)]):
        images[0, :, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] = 40 * i
        tokens[0, row, col] = i + 1
    assert foreground_tokens(images, 8).sum() == 4
    metrics = tokenizer_metrics(images, images, tokens, vocab_size=16)
    assert metrics["perplexity"] < 1.6
    assert metrics["foreground_perplexity"] == pytest.approx(4.0)
    assert metrics["foreground_codes_used"] == pytest.approx(4 / 16)


def test_collapse_is_named_when_foreground_tokens_share_a_few_codes() -> None:
    images = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    # Half black, half white: the median, black, is taken as the background, so the
    # white bottom half is the foreground, 32 of the 64 tokens.
    images[0, :, :16] = 0
    few = torch.zeros(1, 8, 8, dtype=torch.long)  # one code for everything
    many = torch.arange(64).view(1, 8, 8)  # every token its own code
    collapsed = tokenizer_metrics(images, images, few, vocab_size=512)
    message = collapse_message(collapsed, vocab_size=512)
    assert message is not None and "1 of 512 codes" in message
    assert collapse_message(tokenizer_metrics(images, images, many, vocab_size=512), 512) is None
    # One code for all but 12 of 128 foreground tokens: enough codes appear (13 of 512),
    # but in effect one is used.
    batch = images.expand(4, -1, -1, -1)
    stray = torch.zeros(4, 8, 8, dtype=torch.long)
    stray[0, 4:].view(-1)[:12] = torch.arange(1, 13)  # in the foreground half
    mostly_one = tokenizer_metrics(batch, batch, stray, vocab_size=512)
    assert mostly_one["foreground_codes_used"] >= 0.02
    assert mostly_one["foreground_perplexity"] == pytest.approx(1.72, abs=0.01)
    message = collapse_message(mostly_one, 512)
    assert message is not None and "13 of 512 codes" in message and "as if 1.72" in message


def test_a_decoder_that_draws_one_image_for_any_tokens_is_named() -> None:
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    tokens = torch.arange(4 * 16).view(4, 4, 4)  # plenty of codes in use
    alike = images[:1].expand(4, -1, -1, -1)  # one reconstruction for every image
    dead = tokenizer_metrics(images, alike, tokens, vocab_size=512)
    assert dead["reconstruction_spread"] == 0.0
    message = collapse_message(dead, 512)
    assert message is not None and "decoder ignores the tokens" in message
    healthy = tokenizer_metrics(images, images, tokens, vocab_size=512)
    assert healthy["reconstruction_spread"] == pytest.approx(1.0)
    assert collapse_message(healthy, 512) is None
