"""Sparse attention masks: exact patterns on a small grid, and what outputs depend on."""

from __future__ import annotations

import pytest
import torch

from dalle.models.attention_masks import (
    image_to_image_mask,
    mask_function,
    paper_layer_schedule,
    text_image_mask,
)
from dalle.models.dalle_transformer import DALLEConfig, SelfAttention


def _seen(mask: torch.Tensor, query: int) -> list[int]:
    return torch.nonzero(mask[query]).flatten().tolist()


def test_image_masks_on_a_3x3_grid() -> None:
    # Raster positions:  0 1 2 / 3 4 5 / 6 7 8
    row = image_to_image_mask("row", grid=3)
    assert _seen(row, 0) == [0]
    assert _seen(row, 4) == [1, 2, 3, 4]  # the previous 3 tokens and itself
    assert _seen(row, 8) == [5, 6, 7, 8]
    column = image_to_image_mask("column", grid=3)
    assert _seen(column, 7) == [1, 4, 7]
    assert _seen(column, 5) == [2, 5]
    conv = image_to_image_mask("conv", grid=3, kernel=3)
    assert _seen(conv, 4) == [0, 1, 2, 3, 4]
    assert _seen(conv, 3) == [0, 1, 3]  # no wrap-around to the previous row's end
    assert _seen(conv, 8) == [4, 5, 7, 8]
    full = image_to_image_mask("full", grid=3)
    assert torch.equal(full, torch.ones(9, 9, dtype=torch.bool).tril())
    for kind in ("row", "column", "conv", "full"):
        mask = image_to_image_mask(kind, grid=3, kernel=3)
        assert not mask.triu(1).any(), kind  # never a later token
        assert mask.diagonal().all(), kind  # always itself


def test_text_sees_text_causally_and_image_sees_all_text() -> None:
    mask = text_image_mask("row", text_positions=3, grid=2)
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 1, 1, 1],  # image token 3 (row 1, col 1): its row window is tokens 1..3
    ], dtype=torch.bool)  # fmt: skip
    assert torch.equal(mask, expected)


def test_paper_schedule() -> None:
    schedule = paper_layer_schedule(64)
    assert schedule[-1] == "conv"
    columns = [i for i, kind in enumerate(schedule, start=1) if kind == "column"]
    assert columns == list(range(2, 63, 4))
    assert schedule.count("row") == 64 - 1 - len(columns)
    assert paper_layer_schedule(1) == ["conv"]
    with pytest.raises(ValueError, match="kernel"):
        image_to_image_mask("conv", grid=3, kernel=4)


@pytest.mark.parametrize("kind", ["row", "column", "conv", "full"])
def test_no_output_depends_on_an_input_outside_its_mask(kind: str) -> None:
    torch.manual_seed(0)
    config = DALLEConfig(text_vocab_size=8, text_len=3, image_vocab_size=8, image_grid=4,
                         width=16, layers=1, heads=2, attention=[kind], conv_kernel=3)  # fmt: skip
    layer = SelfAttention(config).double()
    mask = text_image_mask(kind, text_positions=4, grid=4, kernel=3)
    x = torch.randn(1, mask.shape[0], 16, dtype=torch.double, requires_grad=True)
    for query in range(mask.shape[0]):
        (grad,) = torch.autograd.grad(layer(x, mask)[0, query].sum(), x)
        depends = grad[0].abs().sum(dim=1) > 0
        assert torch.equal(depends, mask[query]), (kind, query)


@pytest.mark.parametrize("kind", ["row", "column", "conv", "full"])
@pytest.mark.parametrize(("text_positions", "grid", "kernel"), [(5, 4, 3), (9, 6, 5), (3, 7, 11)])
def test_mask_function_is_the_dense_mask(kind: str, text_positions: int, grid: int, kernel: int):
    """FlexAttention's index arithmetic allows exactly what the dense mask allows."""
    dense = text_image_mask(kind, text_positions, grid, kernel)
    s = dense.shape[0]
    q, k = torch.arange(s).view(s, 1), torch.arange(s).view(1, s)
    assert torch.equal(mask_function(kind, text_positions, grid, kernel)(q, k), dense)
    with pytest.raises(ValueError, match="unknown"):
        mask_function("diagonal", text_positions, grid)
