"""DALL-E 2's decoder: a CLIP image embedding (and the caption) to a 64x64 image
(Ramesh et al. 2022, section 2.1; GLIDE's U-Net, modified).

The CLIP image embedding enters twice: projected and added to the timestep embedding
(diffusers' ``class_embed_type="projection"``), and projected into 4 extra context
tokens beside the caption encoder's outputs, which the U-Net's attention layers read.
For classifier-free guidance the embedding is replaced by a learned one 10% of the time
and the caption by padding 50% of the time. The U-Net is diffusers'
``UNet2DConditionModel``; it predicts the noise (epsilon) of images in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dalle.models import init
from dalle.models.clip import _encoder, caption_tower_starts
from dalle.models.pretrained import PretrainedMixin
from dalle.tokenizers.text import PAD_ID


@dataclass
class DecoderConfig:
    text_vocab_size: int = 49408  # the caption tokenizer's (set from it)
    text_len: int = 77  # (set from the tokenizer)
    embed_dim: int = 768  # the CLIP's embedding width (set from the CLIP)
    image_size: int = 64  # the side of what is diffused (pixels, or a latent decoder's codes)
    # 3 for pixels; for a latent decoder, the image tokenizer's code channels: it draws an
    # FSQ tokenizer's code grid, which that tokenizer's decoder turns into pixels.
    image_channels: int = 3
    channels: list[int] = field(default_factory=lambda: [512, 1024, 1536, 2048])  # per level
    # Levels whose blocks also attend to the context (the paper: at 32, 16 and 8 pixels).
    attention: list[bool] = field(default_factory=lambda: [False, True, True, True])
    layers_per_level: int = 3
    head_dim: int = 64
    context_width: int = 512  # the caption encoder's width, and the context tokens'
    text_layers: int = 2  # caption encoder blocks (GLIDE's text pathway, kept small)
    text_heads: int = 8
    clip_tokens: int = 4  # extra context tokens from the CLIP image embedding
    norm_groups: int = 32
    timesteps: int = 1000
    # What the U-Net predicts: "epsilon" (the noise, as GLIDE), "sample" (the clean
    # image, x0) or "v_prediction" (Salimans & Ho 2022).
    prediction: str = "epsilon"

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.attention):
            raise ValueError("model.channels and model.attention need one entry per level")
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"model.image_size {self.image_size} must halve "
                             f"{len(self.channels) - 1} times")  # fmt: skip
        for width in self.channels:
            if width % self.norm_groups or width % self.head_dim:
                raise ValueError(f"model.channels {width} must divide by norm_groups "
                                 f"{self.norm_groups} and head_dim {self.head_dim}")  # fmt: skip
        if self.prediction not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"model.prediction must be epsilon, sample or v_prediction, "
                             f"not {self.prediction!r}")  # fmt: skip
        if self.context_width % self.text_heads:
            raise ValueError("model.context_width must divide into model.text_heads")


DECODER_PRESETS: dict[str, DecoderConfig] = {
    # The paper's 64px base model (3.5B with GLIDE's text encoder): 512 channels,
    # multipliers 1, 2, 3, 4, 3 blocks per level, heads of 64.
    "decoder-paper": DecoderConfig(),
    # Shapes World and emoji on a CPU: 16 channels at full resolution and attention at
    # 8x8 only: 42 images/s trained under bf16 on 2 cores, where 32-128 channels with
    # attention at 32, 16 and 8 make 12 (self-attention over 1,024 positions dominates).
    "decoder-small": DecoderConfig(
        text_vocab_size=512, text_len=24, embed_dim=64, channels=[16, 32, 64, 128],
        attention=[False, False, False, True], layers_per_level=1, head_dim=16,
        context_width=128, text_heads=4, norm_groups=8,
    ),
    # A latent decoder for Shapes World on a CPU: it draws an FSQ tokenizer's 8x8 code grid
    # (image_size and image_channels are set from the tokenizer), attending at 4x4 and
    # 2x2: 166 images/s trained under bf16 on 2 cores (attention at 8x8 too: 69, with two
    # blocks per level).
    "decoder-latent-small": DecoderConfig(
        text_vocab_size=512, text_len=24, embed_dim=64, image_size=8, image_channels=4,
        channels=[64, 128, 256], attention=[False, True, True], layers_per_level=1,
        head_dim=32, context_width=128, text_heads=4, norm_groups=16,
    ),
    # For tests.
    "decoder-tiny": DecoderConfig(
        text_vocab_size=64, text_len=8, embed_dim=16, image_size=8, channels=[8, 16],
        attention=[False, True], layers_per_level=1, head_dim=8, context_width=16,
        text_layers=1, text_heads=2, norm_groups=4, timesteps=100,
    ),
}  # fmt: skip


class DecoderCondition:
    """What both DALL-E 2 decoders read besides what they draw (GLIDE-style): a small
    caption encoder and the CLIP image embedding projected into ``clip_tokens`` context
    tokens; a learned null embedding stands in for a dropped one. Mixed into an
    ``nn.Module`` whose config has ``text_vocab_size``, ``text_len``, ``embed_dim``,
    ``context_width``, ``text_layers``, ``text_heads`` and ``clip_tokens``."""

    config: Any

    def build_condition(self) -> None:
        c = self.config
        self.token_embedding = nn.Embedding(c.text_vocab_size, c.context_width)
        self.text_positions = nn.Parameter(torch.empty(c.text_len, c.context_width))
        self.text_blocks = _encoder(c.context_width, c.text_layers, c.text_heads, 4)
        self.text_norm = nn.LayerNorm(c.context_width)
        self.clip_to_tokens = nn.Linear(c.embed_dim, c.clip_tokens * c.context_width)
        self.null_image_embed = nn.Parameter(torch.empty(c.embed_dim))

    def condition_starts(self) -> dict[str, init.Fill]:
        """Caption embeddings N(0, 0.02) and blocks as the CLIP's; the null embedding at
        a unit embedding's scale."""
        c = self.config
        starts = caption_tower_starts(c.context_width, c.text_layers)
        return starts | {"null_image_embed": init.normal(c.embed_dim**-0.5)}

    def no_weight_decay(self) -> set[str]:
        return {"token_embedding.weight", "text_positions"}

    def condition(
        self,
        text: torch.Tensor,
        image_embed: torch.Tensor,
        drop_text: torch.Tensor | None = None,
        drop_image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The embedding scaled to entries of about 1 ``[B, D]`` (a dropped one the null
        embedding), the attention context ``[B, L + clip_tokens, W]`` and its mask
        ``[B, L + clip_tokens]``; ``drop_text`` / ``drop_image`` ``[B]`` bool replace a
        row's caption by padding / its embedding by the learned null one."""
        if drop_text is not None:
            text = torch.where(drop_text[:, None], torch.full_like(text, PAD_ID), text)
        if drop_image is not None:
            null = self.null_image_embed.to(image_embed.dtype).expand_as(image_embed)
            image_embed = torch.where(drop_image[:, None], null, image_embed)
        # Unit-norm embeddings have entries of about 1/sqrt(D): scale them to about 1.
        image_embed = image_embed * self.config.embed_dim**0.5
        return image_embed, *self.context(text, image_embed)

    def context(
        self, text: torch.Tensor, image_embed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention context ``[B, L + clip_tokens, W]``: the caption's encodings, then
        the image embedding's tokens; and its mask ``[B, L + clip_tokens]`` (padding
        unseen)."""
        length = text.shape[1]
        h = self.token_embedding(text) + self.text_positions[:length]
        # Causal, as CLIP's text tower: a caption never reads its padding, and a dropped
        # caption (all padding) stays finite, which a padding mask would not allow.
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=text.device)
        h = self.text_norm(self.text_blocks(h, mask=causal.to(h.dtype), is_causal=True))
        extra = self.clip_to_tokens(image_embed).view(len(text), self.config.clip_tokens, -1)
        seen = torch.ones(len(text), self.config.clip_tokens, dtype=torch.bool, device=text.device)
        mask = torch.cat([text != PAD_ID, seen], dim=1)
        return torch.cat([h, extra.to(h.dtype)], dim=1), mask


class ImageDecoder(DecoderCondition, PretrainedMixin, nn.Module, config=DecoderConfig):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(c := config)  # sets config and init_seed (see PretrainedMixin)
        self.build_condition()
        from diffusers import UNet2DConditionModel  # seconds to import: only when needed

        down = [("CrossAttnDownBlock2D" if a else "DownBlock2D") for a in c.attention]
        up = [("CrossAttnUpBlock2D" if a else "UpBlock2D") for a in reversed(c.attention)]
        self.unet = UNet2DConditionModel(
            sample_size=c.image_size, in_channels=c.image_channels,
            out_channels=c.image_channels,
            down_block_types=tuple(down), up_block_types=tuple(up),
            block_out_channels=tuple(c.channels), layers_per_block=c.layers_per_level,
            norm_num_groups=c.norm_groups, cross_attention_dim=c.context_width,
            attention_head_dim=[w // c.head_dim for w in c.channels],
            class_embed_type="projection", projection_class_embeddings_input_dim=c.embed_dim,
        )  # fmt: skip
        self.init_weights()

    def init_weights(self) -> None:
        """The caption tower and null embedding as :meth:`condition_starts`, the U-Net's
        last convolution at zero (it starts by predicting no noise, as ADM's does), and
        PyTorch's defaults elsewhere. A no-op on meta."""
        if self.null_image_embed.is_meta:
            return
        starts = self.condition_starts() | {"unet.conv_out.weight": init.constant(0.0),
                                            "unet.conv_out.bias": init.constant(0.0)}  # fmt: skip
        init.initialise_(self, self.init_seed, init.named_starts(starts))

    def residual_blocks(self) -> list[nn.Module]:
        return [*self.text_blocks.layers, *self.unet.down_blocks, self.unet.mid_block,
                *self.unet.up_blocks]  # fmt: skip

    def forward(
        self,
        noised: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        image_embed: torch.Tensor,
        drop_text: torch.Tensor | None = None,
        drop_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What ``config.prediction`` names (by default the noise) of ``noised`` (images in
        [-1, 1], ``[B, 3, S, S]``, or codes ``[B, image_channels, S, S]``) at ``timesteps``
        ``[B]``, given captions ``[B, L]`` and unit-norm CLIP image embeddings ``[B, D]``;
        ``drop_text`` / ``drop_image`` ``[B]`` bool replace a row's caption by padding /
        its embedding by the learned null one."""
        image_embed, context, mask = self.condition(text, image_embed, drop_text, drop_image)
        return self.unet(noised, timesteps, encoder_hidden_states=context,
                         class_labels=image_embed.to(noised.dtype),
                         encoder_attention_mask=mask, return_dict=False)[0]  # fmt: skip
