"""Blocked attention computes exactly what the masked square computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dalle.models.attention_masks import text_image_mask
from dalle.models.blocked_attention import BlockedLayout, block_mask, blocked_attention


@pytest.mark.parametrize("kind", ["row", "column", "conv", "full"])
@pytest.mark.parametrize(("text", "grid", "kernel"), [(5, 4, 3), (9, 8, 5), (3, 6, 11)])
def test_blocked_attention_equals_the_masked_square(kind, text, grid, kernel) -> None:
    torch.manual_seed(0)
    length = text + grid * grid
    q, k, v = (torch.randn(2, 3, length, 4, dtype=torch.float64, requires_grad=True)
               for _ in range(3))  # fmt: skip
    mask = text_image_mask(kind, text, grid, kernel)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = blocked_attention(q, k, v, BlockedLayout(kind, text, grid, kernel))
    assert torch.allclose(got, expected, atol=1e-12)
    weights = torch.randn_like(expected)
    grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    blocked_grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    for a, b in zip(grads, blocked_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_block_mask_reaches_only_what_the_layer_allows() -> None:
    # Row attention, 4x4 grid, 2 caption positions, 1 head: query (row 2, column 1) sees
    # the caption, columns 1..3 of row 1 and columns 0..1 of its own row.
    mask = block_mask(BlockedLayout("row", 2, 4), 1, torch.device("cpu"))
    assert mask.shape == (1, 4, 4, 2 + 2 * 4)
    caption, row_above, own_row = (
        [True, True],
        [False, True, True, True],
        [True, True, False, False],
    )
    assert mask[0, 2, 1].tolist() == [*caption, *row_above, *own_row]
    # The first row has no row above: nothing there is visible.
    assert not mask[0, 0, :, 2:6].any()


def test_blocked_attention_needs_the_whole_grid() -> None:
    q = torch.zeros(1, 1, 5 + 16 - 1, 4)
    with pytest.raises(ValueError, match="whole sequence"):
        blocked_attention(q, q, q, BlockedLayout("row", 5, 4))
