"""Attention masks of the DALL-E transformer, as pure functions.

The sequence is ``[text side ; image side]``: ``text_positions`` positions (a start token
and the caption's tokens), then the image tokens of a ``grid x grid`` map in raster
order. A mask is a bool tensor ``[S, S]`` (``S = text_positions + grid**2``) in which
``mask[query, key]`` is True where the query may attend to the key.

- Text attends causally to text (and never to the image).
- Every image position attends to every text position, in every layer.
- Image to image is causal and, per layer, one of (Ramesh et al. 2021, App. B.1, after the
  strided pattern of Child et al. 2019):

  - ``row``: the previous ``grid`` tokens in raster order and itself, i.e. its row so far
    and the rest of the row above back to its own column;
  - ``column``: every ``grid``-th previous token, i.e. its own column in earlier rows;
  - ``conv``: a causal ``kernel x kernel`` neighbourhood (rows up to ``kernel // 2``
    above, columns within ``kernel // 2`` either side, nothing after itself);
  - ``full``: every previous image token.
"""

from __future__ import annotations

import torch

IMAGE_ATTENTION_KINDS: tuple[str, ...] = ("row", "column", "conv", "full")


def image_to_image_mask(kind: str, grid: int, kernel: int = 11) -> torch.Tensor:
    """Bool ``[N, N]`` (``N = grid**2``): which earlier image tokens each one may see."""
    if kind not in IMAGE_ATTENTION_KINDS:
        raise ValueError(f"unknown image attention {kind!r}; use one of {IMAGE_ATTENTION_KINDS}")
    n = grid * grid
    q = torch.arange(n).view(n, 1)
    k = torch.arange(n).view(1, n)
    distance = q - k  # raster distance, >= 0 for earlier keys
    causal = distance >= 0
    if kind == "full":
        return causal
    if kind == "row":
        return causal & (distance <= grid)
    if kind == "column":
        return causal & (distance % grid == 0)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"conv kernel must be odd and positive, got {kernel}")
    half = kernel // 2
    rows_above = q // grid - k // grid  # [N, N]
    columns_apart = (q % grid - k % grid).abs()
    return causal & (rows_above <= half) & (columns_apart <= half)


def text_image_mask(kind: str, text_positions: int, grid: int, kernel: int = 11) -> torch.Tensor:
    """Bool ``[S, S]`` mask of one layer over the whole ``[text ; image]`` sequence."""
    t, n = text_positions, grid * grid
    mask = torch.zeros(t + n, t + n, dtype=torch.bool)
    mask[:t, :t] = torch.ones(t, t, dtype=torch.bool).tril()
    mask[t:, :t] = True
    mask[t:, t:] = image_to_image_mask(kind, grid, kernel)
    return mask


def paper_layer_schedule(layers: int) -> list[str]:
    """The paper's image attention per layer, layers numbered from 1.

    Column attention where ``(i - 2) % 4 == 0``, row attention otherwise, and
    convolutional attention in the last layer.
    """
    schedule = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, layers + 1)]
    if layers:
        schedule[-1] = "conv"
    return schedule


def mask_function(kind: str, text_positions: int, grid: int, kernel: int = 11):
    """:func:`text_image_mask` as arithmetic on query and key indices: ``f(q, k)`` is True
    where query position ``q`` may attend to key position ``k`` (tensors of any matching
    shape). FlexAttention evaluates this inside its kernel, for every partly masked block:
    a few integer operations instead of a read from an ``[S, S]`` mask in memory."""
    if kind not in IMAGE_ATTENTION_KINDS:
        raise ValueError(f"unknown image attention {kind!r}; use one of {IMAGE_ATTENTION_KINDS}")
    if kind == "conv" and (kernel < 1 or kernel % 2 == 0):
        raise ValueError(f"conv kernel must be odd and positive, got {kernel}")
    t, half = text_positions, kernel // 2

    def allowed(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        causal = k <= q  # text attends causally; so does the image, within its kind
        if kind == "full":
            return causal
        distance = q - k  # raster distance between image tokens (both image positions)
        if kind == "row":
            image = distance <= grid
        elif kind == "column":
            image = distance % grid == 0
        else:
            qi, ki = q - t, k - t
            image = (qi // grid - ki // grid <= half) & ((qi % grid - ki % grid).abs() <= half)
        # Every key on the text side is visible to every later query (to an image query
        # always; to a text query, causally).
        return causal & ((k < t) | image)

    return allowed
