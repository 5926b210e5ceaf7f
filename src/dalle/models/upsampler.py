"""DALL-E 2's upsampler: a diffusion model from a low-resolution image to one ``scale``
times larger (Ramesh et al. 2022, section 2.1: 64 -> 256 pixels, then 256 -> 1024).

As in the paper (and ADM's super-resolution models), it sees neither the caption nor the
CLIP embedding, only the low-resolution image: resized to the output size (bilinear) and
given to the U-Net beside the noised image as three more input channels. The U-Net is
diffusers' ``UNet2DModel`` without attention (the paper's upsamplers use none), so it
runs on images of any size divisible by its down-sampling. Training corrupts the
low-resolution input with a Gaussian blur (:func:`gaussian_blur`), so that at sampling
time the decoder's imperfect 64-pixel images still look like what it learned from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dalle.models import init
from dalle.models.pretrained import PretrainedMixin


@dataclass
class UpsamplerConfig:
    image_size: int = 256  # output side (set from the data)
    scale: int = 4  # output side over input side
    channels: list[int] = field(default_factory=lambda: [192, 384, 768, 768])  # per level
    layers_per_level: int = 2
    norm_groups: int = 32
    timesteps: int = 1000
    # What the U-Net predicts: "epsilon", "sample" (x0) or "v_prediction".
    prediction: str = "epsilon"
    # Training blurs the low-resolution input with a Gaussian of a standard deviation drawn
    # uniformly from [0, blur_sigma] low-resolution pixels (0: no corruption).
    blur_sigma: float = 0.6

    def __post_init__(self) -> None:
        if self.scale < 1 or self.image_size % self.scale:
            raise ValueError(f"model.image_size {self.image_size} must be a multiple of "
                             f"model.scale {self.scale}")  # fmt: skip
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"model.image_size {self.image_size} must halve "
                             f"{len(self.channels) - 1} times")  # fmt: skip
        if any(width % self.norm_groups for width in self.channels):
            raise ValueError(f"model.channels must divide by norm_groups {self.norm_groups}")
        if self.prediction not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"model.prediction must be epsilon, sample or v_prediction, "
                             f"not {self.prediction!r}")  # fmt: skip
        if self.blur_sigma < 0:
            raise ValueError(f"model.blur_sigma must not be negative, not {self.blur_sigma}")

    @property
    def low_size(self) -> int:
        return self.image_size // self.scale


UPSAMPLER_PRESETS: dict[str, UpsamplerConfig] = {
    # The paper's first upsampler, 64 -> 256, in ADM's super-resolution shape (192
    # channels, multipliers 1, 2, 4, 4, two residual blocks per level, no attention).
    "upsampler-paper": UpsamplerConfig(),
    # Shapes World on a CPU: 32 -> 64 pixels (a 32-pixel decoder is 4 times cheaper per
    # update than a 64-pixel one), 16-128 channels, one block per level.
    "upsampler-small": UpsamplerConfig(
        image_size=64, scale=2, channels=[16, 32, 64, 128], layers_per_level=1, norm_groups=8,
    ),
    # For tests.
    "upsampler-tiny": UpsamplerConfig(
        image_size=16, scale=2, channels=[8, 16], layers_per_level=1, norm_groups=4,
        timesteps=100,
    ),
}  # fmt: skip


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image of ``images`` ``[B, C, H, W]`` blurred by a Gaussian of its own standard
    deviation ``sigma`` ``[B]`` (pixels; 0 leaves it unchanged), reflecting at the edges.
    Separable: one horizontal and one vertical pass of a kernel normalised to sum 1."""
    b, c, h, w = images.shape
    radius = max(1, math.ceil(3 * float(sigma.max()))) if len(sigma) else 1
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    spread = sigma.to(images.dtype).clamp_min(1e-6)[:, None]  # [B, 1]
    kernel = torch.exp(-0.5 * (offsets[None] / spread) ** 2)  # [B, K]
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    # One group per (image, channel): every image gets its own kernel.
    weights = kernel.repeat_interleave(c, dim=0)[:, None]  # [B * C, 1, K]
    x = F.pad(images.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, weights[..., None, :], groups=b * c)  # along the width
    x = F.conv2d(x, weights[..., :, None], groups=b * c)  # along the height
    return x.reshape(b, c, h, w)


class Upsampler(PretrainedMixin, nn.Module, config=UpsamplerConfig):
    def __init__(self, config: UpsamplerConfig) -> None:
        super().__init__(c := config)  # sets config and init_seed (see PretrainedMixin)
        from diffusers import UNet2DModel  # seconds to import: only when needed

        levels = len(c.channels)
        self.unet = UNet2DModel(
            sample_size=c.image_size, in_channels=6, out_channels=3,
            down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
            block_out_channels=tuple(c.channels), layers_per_block=c.layers_per_level,
            norm_num_groups=c.norm_groups, add_attention=False,
        )  # fmt: skip
        self.init_weights()

    def init_weights(self) -> None:
        """The U-Net's last convolution at zero (it starts by predicting nothing, as ADM's
        does) and PyTorch's defaults elsewhere. A no-op on meta."""
        if self.unet.conv_out.weight.is_meta:
            return
        starts = {"unet.conv_out.weight": init.constant(0.0),
                  "unet.conv_out.bias": init.constant(0.0)}  # fmt: skip
        init.initialise_(self, self.init_seed, init.named_starts(starts))

    def residual_blocks(self) -> list[nn.Module]:
        return [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]

    def forward(self, noised: torch.Tensor, timesteps: torch.Tensor, low: torch.Tensor):
        """What ``config.prediction`` names of ``noised`` (images in [-1, 1],
        ``[B, 3, S, S]``) at ``timesteps`` ``[B]``, given the low-resolution images ``low``
        (in [-1, 1], ``[B, 3, S / scale, S / scale]``)."""
        size = noised.shape[-1]
        resized = F.interpolate(low.to(noised.dtype), size=(size, size), mode="bilinear",
                                align_corners=False)  # fmt: skip
        return self.unet(torch.cat([noised, resized], dim=1), timesteps, return_dict=False)[0]
