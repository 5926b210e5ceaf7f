"""DALL-E 2's decoder drawing an image tokenizer's token grid by masked-token diffusion.

Not the paper's decoder, which diffuses pixels with Gaussian noise (``decoder.py``):
this one draws the same tokens the DALL-E transformer draws, by absorbing-state
discrete diffusion (Austin et al. 2021) in the form MUSE (Chang et al. 2023) and
aMUSEd (Patil et al. 2024) use: training masks a random share of the grid's tokens
(``cos(u pi / 2)`` for ``u ~ U(0, 1)``) and the model predicts every masked one at once;
sampling starts from a fully masked grid and, over a few steps, keeps its most confident
predictions. The network is diffusers' ``UVit2DModel`` (aMUSEd's U-ViT: convolutional
blocks at the token grid around a transformer), conditioned as the paper's decoder is
on the CLIP image embedding, twice: as the pooled condition that modulates every
normalisation (where the paper adds it to the timestep embedding) and as 4 context tokens
beside the caption's encodings, which every block cross-attends to. The image
tokenizer's decoder turns the grid into pixels, so any tokenizer (FSQ, the dVAE) works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dalle.models import init
from dalle.models.decoder import DecoderCondition
from dalle.models.pretrained import PretrainedMixin


@dataclass
class TokenDecoderConfig:
    text_vocab_size: int = 49408  # the caption tokenizer's (set from it)
    text_len: int = 77  # (set from the tokenizer)
    embed_dim: int = 768  # the CLIP's embedding width (set from the CLIP)
    image_size: int = 16  # the token grid's side (set from the image tokenizer)
    image_vocab_size: int = 8192  # the image tokenizer's (set from it); the mask is one more
    width: int = 1024  # aMUSEd's: width 1024, 22 transformer layers of 16 heads
    layers: int = 22
    heads: int = 16
    conv_blocks: int = 3  # convolutional blocks before and after the transformer
    token_width: int = 768  # token embedding width (a 1x1 convolution maps it to ``width``)
    context_width: int = 768  # the caption encoder's width, and the context tokens'
    text_layers: int = 2
    text_heads: int = 8
    clip_tokens: int = 4  # extra context tokens from the CLIP image embedding

    def __post_init__(self) -> None:
        for name in ("width", "context_width"):
            heads = self.heads if name == "width" else self.text_heads
            if getattr(self, name) % heads:
                raise ValueError(f"model.{name} {getattr(self, name)} must divide into "
                                 f"{heads} heads")  # fmt: skip
        if self.image_vocab_size < 2 or self.image_size < 1:
            raise ValueError("model.image_vocab_size must be at least 2 and image_size 1")

    @property
    def mask_id(self) -> int:
        """The token of a masked position: one past the image tokenizer's vocabulary."""
        return self.image_vocab_size


TOKEN_DECODER_PRESETS: dict[str, TokenDecoderConfig] = {
    # aMUSEd-256's network (800M with its CLIP text encoder; here with a 2-layer one).
    "token-decoder-paper": TokenDecoderConfig(),
    # Shapes World on a CPU: the demo's 8x8 grid of 1,000 FSQ tokens and 64-wide CLIP.
    "token-decoder-small": TokenDecoderConfig(
        text_vocab_size=512, text_len=24, embed_dim=64, image_size=8, image_vocab_size=1000,
        width=128, layers=4, heads=4, conv_blocks=1, token_width=64, context_width=128,
        text_heads=4,
    ),
    # For tests.
    "token-decoder-tiny": TokenDecoderConfig(
        text_vocab_size=64, text_len=8, embed_dim=16, image_size=4, image_vocab_size=25,
        width=32, layers=1, heads=2, conv_blocks=1, token_width=16, context_width=16,
        text_layers=1, text_heads=2,
    ),
}  # fmt: skip


class TokenDecoder(DecoderCondition, PretrainedMixin, nn.Module, config=TokenDecoderConfig):
    def __init__(self, config: TokenDecoderConfig) -> None:
        super().__init__(c := config)  # sets config and init_seed (see PretrainedMixin)
        self.build_condition()
        from diffusers import UVit2DModel  # seconds to import: only when needed

        # aMUSEd's micro-conditions (image size, crop, aesthetic score) have no meaning
        # here: one constant input of width 2 stands in for them.
        self.unet = UVit2DModel(
            hidden_size=c.width, use_bias=True, cond_embed_dim=c.embed_dim,
            micro_cond_encode_dim=2, micro_cond_embed_dim=2,
            encoder_hidden_size=c.context_width, vocab_size=c.image_vocab_size + 1,
            codebook_size=c.image_vocab_size, in_channels=c.token_width,
            block_out_channels=c.width, num_res_blocks=c.conv_blocks, block_num_heads=c.heads,
            num_hidden_layers=c.layers, num_attention_heads=c.heads,
            intermediate_size=4 * c.width, sample_size=c.image_size,
        )  # fmt: skip
        self.init_weights()

    def init_weights(self) -> None:
        """The caption tower and null embedding as :meth:`condition_starts`, diffusers'
        RMS norms at identity and response norms at zero (as it builds them), PyTorch's
        defaults elsewhere. A no-op on meta."""
        if self.null_image_embed.is_meta:
            return
        starts = init.named_starts(self.condition_starts())

        def rule(module_name: str, module: nn.Module, name: str, param: torch.Tensor) -> init.Fill:
            kind = type(module).__name__
            if kind == "RMSNorm":
                return init.constant(1.0)
            if kind == "GlobalResponseNorm":
                return init.constant(0.0)
            return starts(module_name, module, name, param)

        init.initialise_(self, self.init_seed, rule)

    def residual_blocks(self) -> list[nn.Module]:
        return [*self.text_blocks.layers, *self.unet.transformer_layers]

    def forward(self, tokens: torch.Tensor, text: torch.Tensor, image_embed: torch.Tensor,
                drop_text: torch.Tensor | None = None,
                drop_image: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Logits ``[B, V, h, w]`` over the image vocabulary at every position of
        ``tokens`` ``[B, h, w]`` (``config.mask_id`` where masked), given captions
        ``[B, L]`` and unit-norm CLIP image embeddings ``[B, D]``; ``drop_text`` /
        ``drop_image`` as :meth:`condition`."""
        image_embed, context, _ = self.condition(text, image_embed, drop_text, drop_image)
        # U-ViT's cross-attention takes no mask: the caption's padding is read too (its
        # encodings are causal, so they say where the caption ended).
        constant = image_embed.new_zeros(len(tokens), 1)
        return self.unet(tokens, context, image_embed, constant)
