"""An image tokenizer with finite scalar quantization (Mentzer et al. 2023, "Finite
Scalar Quantization: VQ-VAE Made Simple").

A convolutional autoencoder whose bottleneck has one channel per entry of ``levels``.
Each channel is bounded with tanh to ``levels[i]`` values and rounded, with a
straight-through gradient; the tuple of rounded values is the code, and its index in
mixed radix is the token. There is no codebook to collapse, and no commitment or KL
loss: the model is trained on reconstruction alone, and every code stays reachable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from dalle.data.images import unit_pixels
from dalle.models import init
from dalle.models.pretrained import PretrainedMixin
from dalle.models.refinement import check_refine_settings, refine_codes
from dalle.models.token_grid import TokenGridMixin

# The paper's levels for a target vocabulary size (Table 1).
FSQ_LEVELS: dict[int, list[int]] = {
    2**8: [8, 6, 5],
    2**10: [8, 5, 5, 5],
    2**12: [7, 5, 5, 5, 5],
    2**14: [8, 8, 8, 6, 5],
    2**16: [8, 8, 8, 5, 5, 5],
}


# ----------------------------------------------------------------------------- quantizer


def bound(z: torch.Tensor, levels: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Squashes ``z [..., d]`` so that channel i rounds to one of ``levels[i]`` integers
    (centred on 0; an even level count gets a half-step offset)."""
    half = (levels - 1) * (1 + eps) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / half)
    return torch.tanh(z + shift) * half - offset


def round_straight_through(z: torch.Tensor) -> torch.Tensor:
    """Rounds in the forward pass; the gradient passes as if it did not."""
    return z + (z.round() - z).detach()


def quantize(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``z [..., d]`` -> the nearest code, scaled into [-1, 1] per channel."""
    return round_straight_through(bound(z, levels)) / (levels // 2)


def codes_to_indices(codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Codes ``[..., d]`` in [-1, 1] -> token indices ``[...]`` (mixed radix)."""
    half = levels // 2
    digits = (codes * half + half).round().long()  # [..., d] in 0 .. levels - 1
    return (digits * _radix(levels)).sum(dim=-1)


def indices_to_codes(indices: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Token indices ``[...]`` -> codes ``[..., d]`` in [-1, 1]."""
    half = levels // 2
    digits = (indices[..., None] // _radix(levels)) % levels
    return (digits - half).float() / half


def _radix(levels: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), dim=0)


# ----------------------------------------------------------------------------- model


@dataclass
class FSQConfig:
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    downsample: int = 8  # image pixels per token side, a power of 2
    hidden_width: int = 32  # width at full resolution; doubles per halving, up to 8x
    blocks: int = 1  # residual blocks at each of the lowest `block_stages` resolutions
    # Residual blocks only near the token grid: at full resolution they would cost most
    # of the compute for little gain.
    block_stages: int = 2
    channels: int = 3
    # GroupNorm before the encoder's last convolution: it keeps the latents at the scale
    # of the tanh bound. Without it, at lr 2e-3 the encoder's activations ran away within
    # 200 updates on some seeds: every latent saturated the bound, all positions took
    # one code and no gradient came back (BENCHMARKS.md).
    norm: bool = True
    # A SiLU after each of the decoder's upsampling convolutions. Without it the decoder's
    # layers after its last residual block compose into one linear map up to the output's
    # single SiLU. Off for configs saved before it existed (their layer indices differ).
    decoder_activation: bool = False
    # Encoding by search (models/refinement.py): after the encoder's guess, `refine_steps`
    # Adam steps on each image's latents lower the squared error of its own reconstruction
    # (through the rounding's straight-through gradient); each image keeps the codes of its
    # best step. Costs one decoder pass and its backward per step; 0 encodes with the
    # encoder alone. Training never refines.
    refine_steps: int = 0
    refine_lr: float = 0.05
    refine_precision: str = "auto"  # of the search's decoder passes: fp32, bf16, auto

    def __post_init__(self) -> None:
        if len(self.levels) < 1 or min(self.levels) < 2:
            raise ValueError(f"FSQ levels must be integers >= 2, not {self.levels}")
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of 2, not {self.downsample}")
        check_refine_settings(self.refine_steps, self.refine_lr, self.refine_precision)

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels)

    def token_grid(self, image_size: int) -> int:
        if image_size % self.downsample:
            raise ValueError(f"image size {image_size} is not a multiple of {self.downsample}")
        return image_size // self.downsample


FSQ_PRESETS: dict[str, FSQConfig] = {
    # 64x64 -> 8x8 tokens of 4,096 (8x8-pixel patches): a short transformer sequence.
    "fsq-64-8x8": FSQConfig(levels=FSQ_LEVELS[2**12], downsample=8, hidden_width=32),
    # 64x64 -> 16x16 tokens of 1,000 (4x4-pixel patches).
    "fsq-64-16x16": FSQConfig(levels=FSQ_LEVELS[2**10], downsample=4, hidden_width=32),
    # 256x256 -> 32x32 tokens of 16,000, the paper's grid.
    "fsq-256-32x32": FSQConfig(levels=FSQ_LEVELS[2**14], downsample=8, hidden_width=128, blocks=2),
    # Tests.
    "fsq-tiny": FSQConfig(levels=[5, 5], downsample=2, hidden_width=8),
}


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def _widths(config: FSQConfig) -> list[int]:
    """Width at each resolution, from full size down to the token grid."""
    stages = int(math.log2(config.downsample))
    return [config.hidden_width * min(2**i, 8) for i in range(stages + 1)]


def _has_blocks(config: FSQConfig, stage: int) -> bool:
    return stage > int(math.log2(config.downsample)) - config.block_stages


class FSQEncoder(nn.Module):
    def __init__(self, config: FSQConfig) -> None:
        super().__init__()
        widths = _widths(config)
        layers: list[nn.Module] = [nn.Conv2d(config.channels, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            if _has_blocks(config, i):
                layers += [_ResidualBlock(width) for _ in range(config.blocks)]
            if i + 1 < len(widths):  # halve the resolution
                layers.append(nn.Conv2d(width, widths[i + 1], 4, stride=2, padding=1))
        width = widths[-1]
        norm = nn.GroupNorm(min(8, width // 4), width) if config.norm else nn.Identity()
        layers += [norm, nn.SiLU(), nn.Conv2d(width, len(config.levels), 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` in [-1, 1] -> unbounded latents ``[B, d, h, w]``."""
        return self.layers(x)


class FSQDecoder(nn.Module):
    def __init__(self, config: FSQConfig) -> None:
        super().__init__()
        widths = _widths(config)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(len(config.levels), widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            if _has_blocks(config, len(widths) - 1 - i):
                layers += [_ResidualBlock(width) for _ in range(config.blocks)]
            if i + 1 < len(widths):  # double the resolution
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(width, widths[i + 1], 3, padding=1)]  # fmt: skip
                if config.decoder_activation and i + 2 < len(widths):  # the last has one
                    layers.append(nn.SiLU())
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], config.channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, d, h, w]`` -> pixel logits ``[B, 3, H, W]`` (sigmoid gives [0, 1])."""
        return self.layers(codes)


class FSQTokenizer(TokenGridMixin, PretrainedMixin, nn.Module, config=FSQConfig):
    """Images in, a grid of tokens out, and back: the image-tokenizer interface."""

    def __init__(self, config: FSQConfig) -> None:
        super().__init__(config)  # sets config and init_seed (see PretrainedMixin)
        self.encoder = FSQEncoder(config)
        self.decoder = FSQDecoder(config)
        self.register_buffer("levels", torch.tensor(config.levels), persistent=False)
        self.output_bias: torch.Tensor | None = None  # [C] logits, see init_output_bias
        self.init_weights()

    def init_weights(self) -> None:
        """PyTorch's default initialisation, except that each residual branch ends at zero
        (a block starts as the identity) and the output bias, once ``init_output_bias`` has
        named a background, draws that colour. A no-op on the meta device."""
        if self.levels.is_meta:
            return
        branch_ends = {id(block.branch[-1]) for block in self.residual_blocks()}
        head = self.decoder.layers[-1]

        def rule(module_name: str, module: nn.Module, name: str, param: torch.Tensor) -> init.Fill:
            if id(module) in branch_ends:
                return init.constant(0.0)
            if module is head and name == "bias" and self.output_bias is not None:
                bias = self.output_bias
                return lambda t, g: t.copy_(bias)
            return init.torch_default(module, name, param)

        init.initialise_(self, self.init_seed, rule)
        self.levels.copy_(torch.tensor(self.config.levels))  # buffers are not saved

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pass: uint8 or [0, 1] images ``[B, 3, H, W]`` -> pixel logits of
        the reconstruction ``[B, 3, H, W]`` and the quantized codes ``[B, d, h, w]``."""
        codes = self.quantized(images)
        return self.decoder(codes), codes

    def quantized(self, images: torch.Tensor) -> torch.Tensor:
        return self._quantize(self.latents(images))

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images ``[B, 3, H, W]`` -> unbounded latents ``[B, d, h, w]``."""
        x = unit_pixels(images)
        # Channels-last activations: oneDNN's convolutions run ~1.4x faster on CPU.
        x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(2 * x - 1).float()

    def _quantize(self, latents: torch.Tensor) -> torch.Tensor:
        return quantize(latents.movedim(1, -1), self.levels).movedim(-1, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, 3, H, W]`` -> tokens ``[B, h, w]`` (refined if the config
        asks for ``refine_steps``)."""
        return codes_to_indices(self.codes(images).movedim(1, -1), self.levels)

    @torch.no_grad()
    def refined_codes(self, images: torch.Tensor, steps: int) -> torch.Tensor:
        """The codes ``[B, d, h, w]`` of uint8 images after ``steps`` steps of encoding by
        search (:func:`refine_codes`) from the encoder's guess."""
        dtype = next(self.decoder.parameters()).dtype

        def render(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            codes = self._quantize(latents)
            return codes, torch.sigmoid(self.decoder(codes.to(dtype)).float())

        target = unit_pixels(images)
        lr, precision = self.config.refine_lr, self.config.refine_precision
        return refine_codes(self.latents(images), render, target, steps, lr, precision)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, h, w]`` -> uint8 images ``[B, 3, H, W]``."""
        return self.decode_codes(indices_to_codes(tokens, self.levels).movedim(-1, 1))

    # Codes, the continuous face of the tokens: what a latent diffusion decoder draws.

    @torch.no_grad()
    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, 3, H, W]`` -> their codes ``[B, d, h, w]``, each channel one
        of its ``levels`` values in [-1, 1] (refined if the config asks for
        ``refine_steps``)."""
        if self.config.refine_steps:
            return self.refined_codes(images, self.config.refine_steps)
        return self.quantized(images)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, d, h, w]`` (any values: each channel is snapped to its nearest
        level) -> uint8 images ``[B, 3, H, W]``."""
        levels = self.levels.view(1, -1, 1, 1).to(codes.device)
        half = levels // 2  # digits run from -half to levels - 1 - half
        digits = torch.minimum((codes.float() * half).round().clamp_min(-half), levels - 1 - half)
        snapped = digits / half
        dtype = next(self.decoder.parameters()).dtype
        pixels = torch.sigmoid(self.decoder(snapped.to(dtype)).float())
        return (pixels * 255).round().to(torch.uint8)

    @torch.no_grad()
    def init_output_bias(self, pixels: torch.Tensor) -> None:
        """Starts the decoder at a constant image of ``pixels`` (``[C]`` in [0, 1]), the
        data's background: capacity then goes to what differs from it. On the meta
        device the colour is kept for ``init_weights``."""
        self.output_bias = torch.logit(pixels.detach().float().cpu().clamp(0.02, 0.98))
        head = self.decoder.layers[-1]
        if not head.bias.is_meta:
            head.bias.copy_(self.output_bias)

    def no_weight_decay(self) -> set[str]:
        return set()  # every matrix and kernel decays

    def residual_blocks(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, _ResidualBlock)]

    def parameter_counts(self) -> dict[str, int]:
        encoder = sum(p.numel() for p in self.encoder.parameters())
        decoder = sum(p.numel() for p in self.decoder.parameters())
        return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}
