"""Image decoding and the one preprocessing every model here shares."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to RGB, compositing transparency onto white.

    Emoji and other cut-outs are transparent outside the subject; dropping alpha naively
    would reveal whatever colour the transparent pixels happen to store (often black).
    """
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scales the shorter side to ``size`` and crops the centre to ``size x size``."""
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS)


def load_image(source: bytes | str | Path, size: int) -> torch.Tensor:
    """Decodes, converts and resizes an image: uint8 tensor ``[3, size, size]``.

    Raises ``OSError`` or ``ValueError`` (from PIL) for data that is not a readable image.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(stream) as image:
        image.load()  # decode now, so truncated files fail here rather than later
        rgb = resize_center_crop(to_rgb(image), size)
    array = np.asarray(rgb, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """uint8 ``[3, H, W]`` tensor or ``[H, W, 3]`` array to a PIL image."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))


def make_grid(images: torch.Tensor, columns: int, padding: int = 2) -> Image.Image:
    """Tiles uint8 ``[B, 3, H, W]`` images row-major into one PIL image.

    The padding is grey so that white-background cells stay distinguishable.
    """
    count, _, h, w = images.shape
    rows = (count + columns - 1) // columns
    grid = np.full(
        (rows * (h + padding) + padding, columns * (w + padding) + padding, 3), 160, np.uint8
    )
    for i in range(count):
        r, c = divmod(i, columns)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y : y + h, x : x + w] = images[i].permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(grid)
