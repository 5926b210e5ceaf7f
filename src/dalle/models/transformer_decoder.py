"""DALL-E 2's decoder as an autoregressive transformer over an image tokenizer's tokens.

Not the paper's decoder, which diffuses pixels (``decoder.py``): this one is the DALL-E
transformer (``dalle_transformer.py``: caption, then the image's tokens in raster order,
each predicted from those before it) with the CLIP image embedding as one more input,
projected to the model's width and added to the start token (and, with ``embed_tokens``,
to the first caption positions, each by its own projection), which every later position
attends to. Conditioning a token transformer on CLIP image embeddings and sampling it from
text through them is CLIP-GEN's design (Wang et al. 2022); with a diffusion prior in front
it is an unCLIP whose decoder is autoregressive. The image tokenizer's decoder turns the
tokens into pixels, so any tokenizer (FSQ, the dVAE) works.

Classifier-free guidance as the paper's decoder: a zero embedding is the dropped one (its
projection is then the learned bias alone) and a caption of padding the dropped caption.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dalle.models.dalle_transformer import DALLEConfig, DALLETransformer


@dataclass
class TransformerDecoderConfig(DALLEConfig):
    embed_dim: int = 768  # the CLIP's embedding width (set from the CLIP)
    # Inputs the embedding is projected into, each by its own projection: the start token
    # and the first ``embed_tokens - 1`` caption positions (the paper's decoder projects it
    # into 4 context tokens beside the caption's).
    embed_tokens: int = 1
    # 0: each input's share of the embedding is a linear projection of it; > 0: a
    # two-layer MLP of this hidden width makes them (a mapping network, as ClipCap's).
    # On Shapes World, 16 inputs through a 256-wide MLP kept no more of a source's content
    # in variations than the preset's linear 4 (BENCHMARKS.md).
    embed_hidden: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be at least 1, not {self.embed_dim}")
        if self.embed_hidden < 0:
            raise ValueError(f"embed_hidden must be 0 (linear) or more, not {self.embed_hidden}")
        if not 1 <= self.embed_tokens <= self.text_len + 1:
            raise ValueError(f"embed_tokens must be in 1..text_len + 1 ({self.text_len + 1}), "
                             f"not {self.embed_tokens}")  # fmt: skip

    @property
    def image_size(self) -> int:
        """The side of the grid it draws, under the name every decoder's config uses."""
        return self.image_grid


# fmt: off
TRANSFORMER_DECODER_PRESETS: dict[str, TransformerDecoderConfig] = {
    # Shapes World on a CPU: the DALL-E demo transformer's shape (4 layers of width 128,
    # full causal attention) over the demo's 24 caption tokens and 8x8 grid of 1,000
    # tokens, with its 64-wide CLIP's embedding in 4 inputs, as the paper's decoder's 4
    # context tokens (after 12 CPU minutes a held-out image loss of 1.755 against 1.813
    # with the start token alone; BENCHMARKS.md).
    "transformer-decoder-small": TransformerDecoderConfig(
        text_vocab_size=512, text_len=24, image_vocab_size=1000, image_grid=8,
        width=128, layers=4, heads=4, attention=["full"] * 4, embed_dim=64, embed_tokens=4,
    ),
    # For tests.
    "transformer-decoder-tiny": TransformerDecoderConfig(
        text_vocab_size=64, text_len=8, image_vocab_size=25, image_grid=4,
        width=32, layers=2, heads=2, attention=["full"] * 2, embed_dim=16,
    ),
}
# fmt: on


class TransformerDecoder(DALLETransformer, config=TransformerDecoderConfig):
    """Caption ids, a unit-norm CLIP image embedding ``[B, D]`` and image tokens in;
    next-token logits out: :meth:`DALLETransformer.forward` with ``image_embed``."""

    def __init__(self, config: TransformerDecoderConfig) -> None:
        super().__init__(config)
        out = config.embed_tokens * config.width
        self.image_embed_projection: nn.Module = (
            nn.Linear(config.embed_dim, out) if not config.embed_hidden
            else nn.Sequential(nn.Linear(config.embed_dim, config.embed_hidden), nn.GELU(),
                               nn.Linear(config.embed_hidden, out))
        )  # fmt: skip
        # Again, now that the projection exists: every weight is drawn from its own seed
        # (dalle.models.init), so the transformer's are the same as the first time.
        self.init_weights()

    def with_image_embed(self, h: torch.Tensor, image_embed: torch.Tensor | None) -> torch.Tensor:
        """The start token and caption ``h`` ``[B, L + 1, C]`` with the projected embedding
        added to the first ``embed_tokens`` of them."""
        rows, c = h.shape[0], self.config
        if image_embed is None:
            raise ValueError("a transformer decoder draws from CLIP image embeddings: give "
                             "image_embed (zeros for the unconditional rows)")  # fmt: skip
        if image_embed.shape != (rows, c.embed_dim):
            raise ValueError(f"image_embed must be [{rows}, {c.embed_dim}], not "
                             f"{list(image_embed.shape)}")  # fmt: skip
        dtype = next(self.image_embed_projection.parameters()).dtype
        added = self.image_embed_projection(image_embed.to(dtype))
        k = c.embed_tokens
        return torch.cat([h[:, :k] + added.view(rows, k, c.width).to(h.dtype), h[:, k:]], dim=1)
