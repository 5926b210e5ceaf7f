"""Image decoding and the one preprocessing every model here shares."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")


# Images beyond this many pixels (after any decode-time reduction) are refused before
# they are decoded: a 12000x12000 PNG would cost ~0.4 GB per worker just to be shrunk.
DEFAULT_MAX_PIXELS = 40_000_000


class UnreadableImage(ValueError):
    """Data that is not an image this loader may decode; ``reason`` says why in a few
    words (the skip reason a data set reports)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB, compositing transparency onto white.

    Emoji and other cut-outs are transparent outside the subject; dropping alpha naively
    would reveal whatever colour the transparent pixels happen to store (often black).
    16-bit and 32-bit grey images are scaled to 8 bits, not clipped (PIL's own
    conversion clips them, so a 16-bit PNG comes out nearly white).
    """
    if image.mode.startswith("I") or image.mode == "F":
        image = _grey_to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """An ``I;16*``, ``I`` or ``F`` image as ``L``: 16-bit ranges are divided by 257, float
    images in [0, 1] multiplied by 255."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0
    elif image.mode.startswith("I;16") or (values.size and values.max() > 255):
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scales the shorter side to ``size`` and crops the centre to ``size x size``."""
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS)


def open_rgb(
    source: bytes | str | Path, size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decodes an image to 8-bit RGB, upright (EXIF orientation applied).

    With ``size``, formats that can decode at a reduced scale (JPEG) do so down to no less
    than ``size`` on the shorter side. An image of more than ``max_pixels`` pixels after
    that is refused before its pixels are decoded. Raises :class:`UnreadableImage` for
    anything that is not a readable image within those bounds.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # PIL warns above its own bomb limit; ours is lower and refuses instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                if size is not None:
                    _draft(image, size)
                width, height = image.size
                if width * height > max_pixels:
                    raise UnreadableImage(
                        f"image too large ({width}x{height} > {max_pixels:,} pixels)"
                    )
                image.load()  # decode now, so truncated files fail here rather than later
                return to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError:
        raise UnreadableImage("image too large (a decompression bomb)") from None
    except UnreadableImage:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError) as err:
        # PIL raises all of these on broken data
        raise UnreadableImage(f"unreadable image ({type(err).__name__})") from None


def _draft(image: Image.Image, size: int) -> None:
    """Asks the decoder for a reduced scale that keeps the shorter side >= ``size``."""
    width, height = image.size
    scale = min(width, height) / size
    if scale >= 2:
        image.draft("RGB", (max(size, round(width / scale)), max(size, round(height / scale))))


def load_image(
    source: bytes | str | Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Decodes, converts and resizes an image: uint8 tensor ``[3, size, size]``.

    Raises :class:`UnreadableImage` (a ``ValueError``) for data that is not a readable
    image, or one beyond ``max_pixels``.
    """
    rgb = resize_center_crop(open_rgb(source, size, max_pixels), size)
    array = np.asarray(rgb, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0-255), or floats already in [0, 1] -> float [0, 1], same shape."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


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


# A pixel further than this (in uint8 units, any channel) from its image's background
# colour, the image's median, is foreground.
FOREGROUND_THRESHOLD = 60


def foreground_mask(images: torch.Tensor) -> torch.Tensor:
    """Which pixels of uint8 images ``[B, C, H, W]`` differ from their image's median
    colour by more than ``FOREGROUND_THRESHOLD``: float ``[B, 1, H, W]`` of 0 and 1."""
    pixels = images.float()
    background = pixels.flatten(2).median(dim=2).values[..., None, None]  # [B, C, 1, 1]
    return ((pixels - background).abs().amax(dim=1, keepdim=True) > FOREGROUND_THRESHOLD).float()


def window_foreground(images: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """The foreground share of every ``size`` x ``size`` window of uint8 images
    ``[B, C, H, W]`` whose corner is on a multiple of ``stride``: ``[B, rows, cols]``."""
    return F.avg_pool2d(foreground_mask(images), size, stride)[:, 0]


def random_crops(
    images: torch.Tensor,
    size: int,
    stride: int = 1,
    generator: torch.Generator | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """One random ``size`` x ``size`` window of each image ``[B, C, H, W]``, its corner on
    a multiple of ``stride`` (a tokenizer's patch size, so that a crop's tokens fall on
    the whole image's token grid). Corners are uniform, or drawn in proportion to
    ``weights`` ``[B, rows, cols]`` (one per corner on that grid). Returns
    ``[B, C, size, size]``."""
    b, _, h, w = images.shape
    if size > min(h, w) or size % stride:
        raise ValueError(f"crop {size} must fit in {h}x{w} images and be a multiple of {stride}")
    grid_rows, grid_cols = (h - size) // stride + 1, (w - size) // stride + 1
    if weights is None:
        rows = torch.randint(0, grid_rows, (b,), generator=generator) * stride
        cols = torch.randint(0, grid_cols, (b,), generator=generator) * stride
    else:
        corner = torch.multinomial(weights.flatten(1).float(), 1, generator=generator)[:, 0]
        rows, cols = corner // grid_cols * stride, corner % grid_cols * stride
    corners = zip(rows.tolist(), cols.tolist(), strict=True)
    return torch.stack([image[:, r : r + size, c : c + size]
                        for image, (r, c) in zip(images, corners, strict=True)])  # fmt: skip


def shrink(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Images ``[B, C, S, S]`` (any dtype) as floats ``factor`` times smaller, each pixel
    the mean of the ``factor x factor`` pixels it covers."""
    return torch.nn.functional.avg_pool2d(images.float(), factor)
