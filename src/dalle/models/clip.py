"""CLIP: a contrastive image-text model, used here to re-rank and to measure samples.

As in Radford et al. (2021) and open_clip: a causal text transformer whose feature is
the output at the end-of-text token, a ViT image encoder whose feature is the output at
a class token, a linear projection of each into a shared space, and a learnable
temperature. Training pulls each image towards its own caption and away from the other
captions in the batch (and vice versa): see :func:`dalle.losses.clip.clip_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dalle.data.images import unit_pixels
from dalle.models import init
from dalle.models.pretrained import PretrainedMixin
from dalle.tokenizers.text import EOT_ID


@dataclass
class CLIPConfig:
    """Shape of both towers; the defaults are OpenAI's ViT-B/32."""

    text_vocab_size: int = 49408
    text_len: int = 77  # caption tokens, [EOT] included
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    image_size: int = 224
    patch_size: int = 32
    image_width: int = 768
    image_layers: int = 12
    image_heads: int = 12
    embed_dim: int = 512  # the shared space both towers project into
    mlp_ratio: int = 4
    # 0: ViT's patchify, one strided convolution. N > 0: a convolutional stem (Xiao et al.
    # 2021, "Early convolutions help transformers see better") of stride-2 3x3 convolutions
    # starting at N channels and doubling, then a 1x1 to the width; the patch size must
    # be 2 to the number of its layers. It learns shapes from little data much faster.
    conv_stem_width: int = 0
    # "vit", or "resnet": CLIP's other image tower, convolutions instead of attention
    # blocks (here residual 3x3 blocks with GroupNorm, ``image_layers`` of them spread over
    # the stages), ending in CLIP's attention pooling. Stride-2 stages halve the image
    # down to the patch grid and double the channels up to ``image_width``. Convolutions
    # see shape from little data.
    image_encoder: str = "vit"
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100)  # the temperature never goes below 1/100

    def __post_init__(self) -> None:
        if self.text_width % self.text_heads or self.image_width % self.image_heads:
            raise ValueError("each tower's width must be divisible by its number of heads")
        if self.image_size % self.patch_size:
            raise ValueError(f"image size {self.image_size} is not a multiple of the patch size")
        if self.image_encoder not in ("vit", "resnet"):
            raise ValueError(f"image_encoder must be vit or resnet, not {self.image_encoder!r}")
        if (self.conv_stem_width or self.image_encoder == "resnet") and (
            self.patch_size & (self.patch_size - 1)
        ):
            raise ValueError(f"a convolutional image tower needs a power-of-2 patch size, "
                             f"not {self.patch_size}")  # fmt: skip

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# fmt: off
CLIP_PRESETS: dict[str, CLIPConfig] = {
    # OpenAI's ViT-B/32: 151,277,313 parameters with its 49,408-token vocabulary.
    "clip-vit-b32": CLIPConfig(),
    # Shapes World and emoji at 64x64: 8x8-pixel patches.
    "clip-small": CLIPConfig(
        text_vocab_size=512, text_len=24, text_width=256, text_layers=4, text_heads=4,
        image_size=64, patch_size=8, image_width=256, image_layers=4, image_heads=4,
        embed_dim=256,
    ),
    # For tests.
    "clip-tiny": CLIPConfig(
        text_vocab_size=64, text_len=8, text_width=32, text_layers=2, text_heads=2,
        image_size=32, patch_size=8, image_width=32, image_layers=2, image_heads=2,
        embed_dim=16,
    ),
}
# fmt: on


def _encoder(width: int, layers: int, heads: int, mlp_ratio: int) -> nn.TransformerEncoder:
    """Pre-LayerNorm transformer blocks, as in CLIP."""
    layer = nn.TransformerEncoderLayer(
        width,
        heads,
        mlp_ratio * width,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def transformer_block_starts(prefix: str, width: int, layers: int) -> dict[str, init.Fill]:
    """OpenAI CLIP's normals for the matrices of ``prefix``'s blocks: attention's input
    projection N(0, 1/width), the MLP's first layer N(0, 1/(2 width)), and the two
    projections back into the residual stream N(0, 1/(width * 2 layers)), so the stream's
    variance grows by a fixed amount over the whole depth. OpenAI applies this to the text
    tower only; here it goes on both: against PyTorch's defaults (uniform, the same scale
    for every layer) it raised the demo CLIP's zero-shot shape accuracy from 58-66% to
    63-79% on the same seeds in the same 3.2 minutes (BENCHMARKS.md)."""
    attention, mlp, residual = width**-0.5, (2 * width) ** -0.5, (width * 2 * layers) ** -0.5
    starts: dict[str, init.Fill] = {}
    for i in range(layers):
        block = f"{prefix}.layers.{i}"
        starts[f"{block}.self_attn.in_proj_weight"] = init.normal(attention)
        starts[f"{block}.self_attn.out_proj.weight"] = init.normal(residual)
        starts[f"{block}.linear1.weight"] = init.normal(mlp)
        starts[f"{block}.linear2.weight"] = init.normal(residual)
    return starts


def caption_tower_starts(width: int, layers: int) -> dict[str, init.Fill]:
    """CLIP's starts for a caption tower (``token_embedding``, ``text_positions``,
    ``text_blocks``): the embeddings N(0, 0.02), the positions N(0, 0.01), the blocks as
    :func:`transformer_block_starts`. The DALL-E 2 decoder's caption encoder shares it."""
    starts = {"token_embedding.weight": init.normal(0.02), "text_positions": init.normal(0.01)}
    return starts | transformer_block_starts("text_blocks", width, layers)


def _conv_stem(width: int, patch_size: int, out_width: int) -> nn.Sequential:
    """``[B, 3, S, S]`` -> ``[B, out_width, S / patch, S / patch]`` through log2(patch)
    stride-2 3x3 convolutions (``width``, ``2 width``, ...) and a 1x1 projection."""
    layers: list[nn.Module] = []
    channels = 3
    for i in range(patch_size.bit_length() - 1):
        layers += [nn.Conv2d(channels, width * 2**i, 3, 2, padding=1), nn.GELU()]
        channels = width * 2**i
    layers.append(nn.Conv2d(channels, out_width, 1))
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and GELU, added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        groups = math.gcd(channels, 8)
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetTower(nn.Module):
    """``[B, 3, S, S]`` -> ``[B, D]``: CLIP's convolutional image tower, sized for small
    images. A stride-2 stem, then one stage per further halving down to ``S / patch``,
    channels doubling each stage up to ``width``, ``layers`` residual blocks spread
    over the stages (the last stages first), and attention pooling: the mean of the final
    grid, with position embeddings, attends over the grid once (Radford et al. 2021)."""

    def __init__(self, c: CLIPConfig) -> None:
        super().__init__()
        halvings = c.patch_size.bit_length() - 1
        widths = [max(c.image_width >> (halvings - 1 - i), 8) for i in range(halvings)]
        blocks = [c.image_layers // halvings + (i >= halvings - c.image_layers % halvings)
                  for i in range(halvings)]  # fmt: skip
        stages: list[nn.Module] = []
        channels = 3
        for width, count in zip(widths, blocks, strict=True):
            stages.append(nn.Conv2d(channels, width, 3, stride=2, padding=1))
            stages += [_ResidualBlock(width) for _ in range(count)]
            channels = width
        stages.append(nn.GroupNorm(math.gcd(channels, 8), channels))
        self.stages = nn.Sequential(*stages)
        self.positions = nn.Parameter(torch.empty(c.patches + 1, channels))  # N(0, 1/W)
        self.pool = nn.MultiheadAttention(channels, c.image_heads, batch_first=True)
        self.projection = nn.Linear(channels, c.embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.stages(x).flatten(2).transpose(1, 2)  # [B, P, W]
        h = torch.cat([grid.mean(dim=1, keepdim=True), grid], dim=1) + self.positions
        pooled, _ = self.pool(h[:, :1], h, h, need_weights=False)  # [B, 1, W]
        return self.projection(pooled[:, 0])


class CLIP(PretrainedMixin, nn.Module, config=CLIPConfig):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(c := config)  # sets config and init_seed (see PretrainedMixin)
        self.token_embedding = nn.Embedding(c.text_vocab_size, c.text_width)
        self.text_positions = nn.Parameter(torch.empty(c.text_len, c.text_width))
        self.text_blocks = _encoder(c.text_width, c.text_layers, c.text_heads, c.mlp_ratio)
        self.text_norm = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Linear(c.text_width, c.embed_dim, bias=False)

        if c.image_encoder == "resnet":
            self.image_resnet = ResNetTower(c)
        else:
            self._vit_tower(c)

        # Shape [1], not a scalar: FSDP2 shards only tensors with a dimension.
        self.logit_scale = nn.Parameter(torch.empty(1))
        self.register_buffer("pixel_mean", torch.empty(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.empty(3, 1, 1), persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        """CLIP's own starts (Radford et al. 2021): token embeddings N(0, 0.02), text
        positions N(0, 0.01), image positions and class token N(0, 1/width), the text
        projection N(0, 1/width), the logit scale at ``logit_scale_init``, and in both
        towers' transformer blocks the depth-scaled normals of
        :func:`transformer_block_starts`; PyTorch's defaults elsewhere. A no-op on meta."""
        if self.logit_scale.is_meta:
            return
        c = self.config
        starts = caption_tower_starts(c.text_width, c.text_layers)
        starts |= {"text_projection.weight": init.normal(c.text_width**-0.5),
                   "logit_scale": init.constant(c.logit_scale_init),
                   "class_token": init.normal(c.image_width**-0.5),
                   "image_positions": init.normal(c.image_width**-0.5)}  # fmt: skip
        if c.image_encoder == "resnet":
            width = self.image_resnet.positions.shape[1]
            starts["image_resnet.positions"] = init.normal(width**-0.5)
        else:
            starts |= transformer_block_starts("image_blocks", c.image_width, c.image_layers)

        init.initialise_(self, self.init_seed, init.named_starts(starts))
        # CLIP's per-channel normalisation of [0, 1] pixels (its training-set statistics).
        self.pixel_mean.copy_(torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1))
        self.pixel_std.copy_(torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1))

    def _vit_tower(self, c: CLIPConfig) -> None:
        if c.conv_stem_width:
            self.patch_embedding = _conv_stem(c.conv_stem_width, c.patch_size, c.image_width)
        else:
            self.patch_embedding = nn.Conv2d(3, c.image_width, c.patch_size, c.patch_size,
                                             bias=False)  # fmt: skip
        self.class_token = nn.Parameter(torch.empty(c.image_width))
        self.image_positions = nn.Parameter(torch.empty(c.patches + 1, c.image_width))
        self.image_pre_norm = nn.LayerNorm(c.image_width)
        self.image_blocks = _encoder(c.image_width, c.image_layers, c.image_heads, c.mlp_ratio)
        self.image_norm = nn.LayerNorm(c.image_width)
        self.image_projection = nn.Linear(c.image_width, c.embed_dim, bias=False)

    def no_weight_decay(self) -> set[str]:
        return set()  # every matrix and kernel decays

    def residual_blocks(self) -> list[nn.Module]:
        if self.config.image_encoder == "resnet":
            blocks = [m for m in self.image_resnet.stages if isinstance(m, _ResidualBlock)]
            return [*self.text_blocks.layers, *blocks]
        return [*self.text_blocks.layers, *self.image_blocks.layers]

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Caption ids ``[B, L]`` ([EOT] then [PAD]) -> unit-norm features ``[B, D]``."""
        return self._text_features(text)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (or [0, 1] floats) ``[B, 3, S, S]`` -> unit-norm features ``[B, D]``."""
        return self._image_features(images)

    # The public encoders above are entry points that sharding wraps like ``forward``
    # (they gather the weights outside the blocks); ``forward`` calls these, so the
    # wrappers never nest.
    def _text_features(self, text: torch.Tensor) -> torch.Tensor:
        length = text.shape[1]
        h = self.token_embedding(text) + self.text_positions[:length]  # [B, L, W]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=text.device)
        h = self.text_norm(self.text_blocks(h, mask=causal.to(h.dtype), is_causal=True))
        # The feature is the output at the first [EOT]: causally, it has read the caption.
        end = (text == EOT_ID).int().argmax(dim=1)  # [B]
        pooled = h[torch.arange(len(text), device=text.device), end]
        return F.normalize(self.text_projection(pooled), dim=-1)

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = unit_pixels(images)
        x = ((x - self.pixel_mean) / self.pixel_std).to(self.logit_scale.dtype)
        if self.config.image_encoder == "resnet":
            return F.normalize(self.image_resnet(x), dim=-1)
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)  # [B, P, W]
        cls = self.class_token.expand(len(x), 1, -1).to(patches.dtype)
        h = torch.cat([cls, patches], dim=1) + self.image_positions  # [B, 1 + P, W]
        h = self.image_blocks(self.image_pre_norm(h))
        return F.normalize(self.image_projection(self.image_norm(h[:, 0])), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit scale), kept at most exp(logit_scale_max) = 100."""
        return self.logit_scale.clamp(max=self.config.logit_scale_max).exp()

    def forward(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Similarity logits ``[B_images, B_text]``: scaled cosines.

        ``gather`` (data-parallel training) concatenates every rank's features, so that
        each image is contrasted with the captions of the whole global batch.
        """
        image_features, text_features = self._image_features(images), self._text_features(text)
        if gather is not None:
            image_features, text_features = gather(image_features), gather(text_features)
        return self.scale() * image_features @ text_features.T

    def parameter_counts(self) -> dict[str, int]:
        text = sum(p.numel() for n, p in self.named_parameters() if n.startswith(("token", "text")))
        image = sum(
            p.numel()
            for n, p in self.named_parameters()
            if n.startswith(("patch", "class", "image"))  # image_resnet too
        )
        total = sum(p.numel() for p in self.parameters())
        return {"text": text, "image": image, "total": total}
