"""The sparse attention layers computed on the blocks they use, not on a masked square.

A masked ``scaled_dot_product_attention`` over the whole ``[text ; image]`` sequence
computes every query-key pair and throws most of them away: a row-attention query of a
16x16 image uses the caption and at most 17 image keys out of 288. Here each image row's
queries attend only to the caption's keys and the image rows their mask can reach (the row
above and its own for ``row``, ``kernel // 2 + 1`` rows for ``conv``; ``column`` works on
columns instead), with a small mask inside that block. The result equals the masked
attention of :mod:`dalle.models.attention_masks` (tested against it), at a fraction of
the work; this is the CPU's answer to what FlexAttention's block sparsity does on a GPU.

Shapes: ``q, k, v`` are ``[B, heads, S, D]`` with ``S = text_positions + grid**2``: the
whole grid. (The transformer's input lacks the last image token, which is only a target;
it appends a dummy one, which no real query can see, as it comes after every one of them.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BlockedLayout:
    """Which layer kind, over which sequence: what :func:`blocked_attention` needs."""

    kind: str
    text_positions: int  # start token + caption
    grid: int
    kernel: int = 11


def _rows_reached(layout: BlockedLayout) -> int:
    """Image rows a query's block holds: earlier rows its mask reaches, and its own."""
    return {"row": 2, "conv": layout.kernel // 2 + 1, "column": 1}[layout.kind]


@functools.cache
def block_mask(layout: BlockedLayout, heads: int, device: torch.device) -> torch.Tensor:
    """Bool ``[1, g * heads, g, T + R * g]``: for image row (or column) ``r`` (repeated for each
    head) and the query at index ``i`` within it, which keys of its block it may see
    (caption keys first, then ``R`` rows of image keys, the query's own row last)."""
    g, t = layout.grid, layout.text_positions
    reach = _rows_reached(layout)
    chunk = torch.arange(g).view(g, 1, 1, 1)  # the query's row (column for "column")
    i = torch.arange(g).view(1, g, 1, 1)  # its place within it
    above = torch.arange(reach).view(1, 1, reach, 1)  # key row, 0 = the farthest up
    j = torch.arange(g).view(1, 1, 1, g)  # key place within its row
    rows_back = reach - 1 - above  # 0 for the query's own row
    exists = chunk - rows_back >= 0
    earlier = (rows_back > 0) | (j <= i)  # causal within the own row
    if layout.kind == "row":  # the previous `grid` tokens in raster order
        near = (rows_back == 0) | (j >= i)
    elif layout.kind == "conv":
        near = (i - j).abs() <= layout.kernel // 2
    else:  # column: the block is the query's column, all of it before the query
        near = torch.ones_like(earlier)
    image = (exists & earlier & near).reshape(g, g, reach * g)
    mask = torch.cat([torch.ones(g, g, t, dtype=torch.bool), image], dim=-1)
    # 4-D: CPU's fused (flash) attention takes a 4-D mask; a 3-D one falls back to the
    # unfused path, which is several times slower on these small blocks.
    return mask.repeat_interleave(heads, dim=0)[None].to(device)


def _by_chunk(x: torch.Tensor, layout: BlockedLayout) -> torch.Tensor:
    """Image queries, keys or values ``[B, H, g * g, D]`` -> ``[B, g, H, g, D]``: per row
    (per column for "column"), every head's tokens of that row."""
    b, h, _, d = x.shape
    grid = x.view(b, h, layout.grid, layout.grid, d)
    if layout.kind == "column":
        grid = grid.transpose(2, 3)
    return grid.transpose(1, 2)


def _image_blocks(x: torch.Tensor, layout: BlockedLayout) -> torch.Tensor:
    """``[B, g, H, g, D]`` image keys or values by chunk -> each chunk's block,
    ``[B, g, H, R * g, D]``: the rows it reaches, zeros above the first row."""
    g, reach = layout.grid, _rows_reached(layout)
    if reach == 1:
        return x
    padded = F.pad(x, (0, 0, 0, 0, 0, 0, reach - 1, 0))  # [B, reach - 1 + g, H, g, D]
    return torch.cat([padded[:, r : r + g] for r in range(reach)], dim=3)


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockedLayout,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention of the whole sequence under ``layout``'s mask, ``[B, H, S, D]``."""
    t, g = layout.text_positions, layout.grid
    b, h, s, d = q.shape
    if s != t + g * g:
        raise ValueError(f"blocked attention needs the whole sequence ({t + g * g}), got {s}")
    if layout.kind == "full":  # text causal, image sees the caption and its past: causal
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    # Text sees text, causally.
    text = F.scaled_dot_product_attention(
        q[:, :, :t], k[:, :, :t], v[:, :, :t], is_causal=True, dropout_p=dropout_p
    )
    qi, ki, vi = (_by_chunk(x[:, :, t:], layout) for x in (q, k, v))  # [B, g, H, g, D]
    blocks = []
    for whole, image in ((k, ki), (v, vi)):
        caption = whole[:, None, :, :t].expand(b, g, h, t, d)
        blocks.append(torch.cat([caption, _image_blocks(image, layout)], dim=3))
    keys, values = (x.reshape(b, g * h, -1, d) for x in blocks)  # [B, g H, T + R g, D]
    image = F.scaled_dot_product_attention(
        qi.reshape(b, g * h, g, d), keys, values, attn_mask=block_mask(layout, h, q.device),
        dropout_p=dropout_p,
    ).view(b, g, h, g, d)  # fmt: skip
    image = image.transpose(1, 2)  # [B, H, chunk, i, D]
    if layout.kind == "column":
        image = image.transpose(2, 3)
    image = image.reshape(b, h, g * g, d)
    return torch.cat([text, image], dim=2)
