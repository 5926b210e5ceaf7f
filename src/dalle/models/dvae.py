"""The discrete VAE that turns images into a grid of tokens and back (DALL-E stage one).

Architecture as released in openai/DALL-E (``dall_e/encoder.py``, ``decoder.py``):

- Encoder: 7x7 conv, then ``group_count`` groups of ``blocks_per_group`` bottleneck
  residual blocks (3x3, 3x3, 3x3, 1x1 on the residual branch) with widths 1x, 2x, 4x, 8x
  ``hidden_width``, a 2x2 max-pool between groups, and a 1x1 conv to logits over the
  vocabulary. ``group_count`` groups downsample by ``2 ** (group_count - 1)``.
- Decoder: a 1x1 conv from the one-hot token map (this conv *is* the codebook: there is
  no separate embedding table), groups of blocks (1x1, 3x3, 3x3, 3x3) with widths 8x ...
  1x, nearest 2x upsampling between groups, and a 1x1 conv to 6 channels: the mean and
  log-scale of a logit-Laplace distribution per colour channel.
- Each residual branch is scaled by ``1 / n_layers ** 2`` (n_layers = groups x blocks), so
  a deep stack starts close to the identity.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dalle.data.images import unit_pixels
from dalle.models import init
from dalle.models.pretrained import PretrainedMixin
from dalle.models.refinement import check_refine_settings, refine_codes
from dalle.models.token_grid import TokenGridMixin
from dalle.precision import fp32_island


@dataclass
class DVAEConfig:
    """Shape of the discrete VAE; the defaults are the released 256x256 -> 32x32 model."""

    vocab_size: int = 8192  # image tokens
    group_count: int = 4  # downsampling factor is 2 ** (group_count - 1)
    hidden_width: int = 256  # width of the first group; group i is 2**i times wider
    blocks_per_group: int = 2
    decoder_input_width: int = 128  # width the one-hot token map is projected to
    channels: int = 3
    logit_laplace_eps: float = 0.1  # pixel mapping margin, see map_pixels
    # Encoding by search (models/refinement.py, not in the paper): after the encoder's
    # argmax, `refine_steps` Adam steps on each image's token logits lower the squared error
    # of its mean reconstruction (through a straight-through softmax); 0: the argmax alone.
    refine_steps: int = 0
    refine_lr: float = 0.05
    refine_precision: str = "auto"  # of the search's decoder passes: fp32, bf16, auto

    def __post_init__(self) -> None:
        if self.group_count < 1 or self.blocks_per_group < 1 or self.hidden_width % 4:
            raise ValueError(
                "need group_count >= 1, blocks_per_group >= 1 and hidden_width divisible by 4"
            )
        check_refine_settings(self.refine_steps, self.refine_lr, self.refine_precision)

    @property
    def downsample(self) -> int:
        return 2 ** (self.group_count - 1)

    def token_grid(self, image_size: int) -> int:
        if image_size % self.downsample:
            raise ValueError(f"image size {image_size} is not a multiple of {self.downsample}")
        return image_size // self.downsample


DVAE_PRESETS: dict[str, DVAEConfig] = {
    # openai/DALL-E as released: 256x256 -> 32x32 tokens of 8192.
    "dvae-paper": DVAEConfig(),
    # 64x64 -> 16x16 tokens: Shapes World and emoji-noto-64.
    "dvae-small": DVAEConfig(
        vocab_size=1024, group_count=3, hidden_width=64, blocks_per_group=1, decoder_input_width=64
    ),
    # For tests and a fast CPU demo.
    "dvae-tiny": DVAEConfig(
        vocab_size=128, group_count=2, hidden_width=16, blocks_per_group=1, decoder_input_width=16
    ),
}


def _conv(n_in: int, n_out: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel, padding=(kernel - 1) // 2)  # see init_weights


class _ResidualBlock(nn.Module):
    """``identity(x) + gain * branch(x)`` with a 4x bottleneck on the branch."""

    def __init__(self, n_in: int, n_out: int, kernels: tuple[int, ...], gain: float) -> None:
        super().__init__()
        hidden = n_out // 4
        widths = [n_in] + [hidden] * (len(kernels) - 1) + [n_out]
        layers: list[nn.Module] = []
        for k, (a, b) in zip(kernels, itertools.pairwise(widths), strict=True):
            layers += [nn.ReLU(), _conv(a, b, k)]
        self.branch = nn.Sequential(*layers)
        self.identity = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.identity(x) + self.gain * self.branch(x)


class DVAEEncoder(nn.Module):
    def __init__(self, config: DVAEConfig) -> None:
        super().__init__()
        c = config
        gain = 1 / (c.group_count * c.blocks_per_group) ** 2
        layers: list[nn.Module] = [_conv(c.channels, c.hidden_width, 7)]
        width = c.hidden_width
        for group in range(c.group_count):
            out = c.hidden_width * 2**group
            for _ in range(c.blocks_per_group):
                layers.append(_ResidualBlock(width, out, (3, 3, 3, 1), gain))
                width = out
            if group < c.group_count - 1:
                layers.append(nn.MaxPool2d(2))
        self.blocks = nn.Sequential(*layers)
        self.to_logits = nn.Sequential(nn.ReLU(), _conv(width, c.vocab_size, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mapped pixels ``[B, 3, H, W]`` -> token logits ``[B, V, H/d, W/d]`` (fp32)."""
        features = self.features(x)
        # As in openai/DALL-E, the logits are computed in fp32 even under mixed precision:
        # they feed a softmax over thousands of codes and the KL term.
        with fp32_island(features.device):
            return self.head(features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the last layer reads: ``[B, C, H/d, W/d]`` in fp32, after the ReLU."""
        return F.relu(self.blocks(x).float())

    @property
    def head(self) -> nn.Conv2d:
        """The last layer, features -> logits: row k of its 1x1 kernel and bias is code k."""
        return self.to_logits[1]


class DVAEDecoder(nn.Module):
    def __init__(self, config: DVAEConfig) -> None:
        super().__init__()
        c = config
        gain = 1 / (c.group_count * c.blocks_per_group) ** 2
        # The token embedding: a 1x1 conv over the (relaxed) one-hot map.
        self.embed = _conv(c.vocab_size, c.decoder_input_width, 1)
        layers: list[nn.Module] = []
        width = c.decoder_input_width
        for group in reversed(range(c.group_count)):
            out = c.hidden_width * 2**group
            for _ in range(c.blocks_per_group):
                layers.append(_ResidualBlock(width, out, (1, 3, 3, 3), gain))
                width = out
            if group > 0:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers += [nn.ReLU(), _conv(width, 2 * c.channels, 1)]
        self.blocks = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Token distributions ``[B, V, h, w]`` -> logit-Laplace stats ``[B, 6, H, W]``."""
        # The embedding of a relaxed one-hot over thousands of codes runs in fp32, as in
        # openai/DALL-E; the rest follows the ambient precision.
        with fp32_island(z.device):
            h = self.embed(z.float())
        return self.blocks(h)


def map_pixels(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """[0, 1] pixels -> [eps, 1 - eps], keeping the logit-Laplace away from 0 and 1."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Inverse of :func:`map_pixels`, clamped to [0, 1]."""
    return ((x - eps) / (1 - 2 * eps)).clamp(0, 1)


class DiscreteVAE(TokenGridMixin, PretrainedMixin, nn.Module, config=DVAEConfig):
    """Encoder + decoder; images in, tokens out, and back."""

    def __init__(self, config: DVAEConfig) -> None:
        super().__init__(config)  # sets config and init_seed (see PretrainedMixin)
        self.encoder = DVAEEncoder(config)
        self.decoder = DVAEDecoder(config)
        self.output_bias: torch.Tensor | None = None  # [2C], see init_output_bias
        self.init_weights()

    def init_weights(self) -> None:
        """openai/DALL-E's: every convolution N(0, 1 / fan_in) with zero bias; the output
        bias, once ``init_output_bias`` has set it, at the data's background. A no-op on
        the meta device."""
        head = self.decoder.blocks[-1]
        if head.weight.is_meta:
            return

        def rule(module_name: str, module: nn.Module, name: str, param: torch.Tensor) -> init.Fill:
            if module is head and name == "bias" and self.output_bias is not None:
                bias = self.output_bias
                return lambda t, g: t.copy_(bias)
            if name == "bias":
                return init.constant(0.0)
            return init.normal(1 / math.sqrt(param[0].numel()))  # fan_in = in * kernel area

        init.initialise_(self, self.init_seed, rule)

    def forward(
        self, images: torch.Tensor, sample: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training pass. ``sample`` turns token logits into (relaxed) one-hot maps,
        e.g. a Gumbel-softmax at the current temperature.

        Returns the mapped input pixels ``[B, 3, H, W]``, the token logits ``[B, V, h, w]``
        and the decoder's stats ``[B, 6, H, W]`` for the sampled tokens.
        """
        x = self.images_to_input(images)
        logits = self.encoder(x)
        return x, logits, self.decoder(sample(logits))

    def no_weight_decay(self) -> set[str]:
        return set()  # every matrix and kernel decays

    def residual_blocks(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, _ResidualBlock)]

    def images_to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` (or floats in [0, 1]) -> mapped float pixels."""
        x = unit_pixels(images)
        return map_pixels(x, self.config.logit_laplace_eps)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Token logits ``[B, V, h, w]`` for uint8 or [0, 1] images ``[B, 3, H, W]``."""
        return self.encoder(self.images_to_input(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> tokens ``[B, h, w]`` (argmax, no Gumbel noise; then
        refined if the config asks for ``refine_steps``)."""
        if self.config.refine_steps:
            return self.refined_tokens(images, self.config.refine_steps)
        return self.logits(images).argmax(dim=1)

    @torch.no_grad()
    def refined_tokens(self, images: torch.Tensor, steps: int) -> torch.Tensor:
        """Tokens ``[B, h, w]`` after ``steps`` steps of encoding by search
        (:func:`refine_codes`) from the encoder's argmax."""
        dtype = next(self.decoder.parameters()).dtype

        def render(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            soft = logits.softmax(dim=1)  # [B, V, h, w]
            tokens = logits.argmax(dim=1)  # [B, h, w]
            hard = F.one_hot(tokens, self.config.vocab_size).permute(0, 3, 1, 2)
            one_hot = hard + soft - soft.detach()  # straight-through
            return tokens, self.stats_to_images(self.decode_stats(one_hot.to(dtype)))

        target = unit_pixels(images)
        lr, precision = self.config.refine_lr, self.config.refine_precision
        return refine_codes(self.logits(images), render, target, steps, lr, precision)

    def decode_stats(self, z: torch.Tensor) -> torch.Tensor:
        """Token distributions ``[B, V, h, w]`` -> logit-Laplace stats ``[B, 6, H, W]``."""
        return self.decoder(z)

    def stats_to_images(self, stats: torch.Tensor) -> torch.Tensor:
        """Mean of the logit-Laplace as [0, 1] pixels ``[B, 3, H, W]``; the scale is unused."""
        mean = torch.sigmoid(stats[:, : self.config.channels].float())
        return unmap_pixels(mean, self.config.logit_laplace_eps)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, h, w]`` -> uint8 images ``[B, 3, H, W]``."""
        one_hot = F.one_hot(tokens, self.config.vocab_size).permute(0, 3, 1, 2)
        dtype = next(self.decoder.parameters()).dtype
        images = self.stats_to_images(self.decode_stats(one_hot.to(dtype)))
        return (images * 255).round().to(torch.uint8)

    @torch.no_grad()
    def init_output_bias(self, pixels: torch.Tensor, log_scale: float = -1.0) -> None:
        """Starts the decoder at a constant image of ``pixels`` (``[C]`` in [0, 1]).

        On mostly-background data (Shapes World is ~85% white) a decoder that starts at
        grey first learns to paint the background, and the fastest way there is to route
        every position to one code: the encoder's softmax saturates on it and the codebook
        collapses before objects are learned. Starting at the background colour removes
        that first lesson, so codes are spent on what differs from it.
        """
        head = self.decoder.blocks[-1]  # the 1x1 conv to [location; log-scale] channels
        pixels = pixels.detach().float().cpu().clamp(0, 1)
        mapped = map_pixels(pixels, self.config.logit_laplace_eps)
        self.output_bias = torch.cat([torch.logit(mapped), torch.full_like(mapped, log_scale)])
        if not head.bias.is_meta:  # on meta, init_weights applies it once weights exist
            head.bias.copy_(self.output_bias)

    def parameter_counts(self) -> dict[str, int]:
        encoder = sum(p.numel() for p in self.encoder.parameters())
        decoder = sum(p.numel() for p in self.decoder.parameters())
        return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}
