"""DALL-E 2's diffusion prior: a caption to a CLIP image embedding (Ramesh et al. 2022,
section 2.2).

A decoder-only transformer reads, in order, the caption's tokens, the CLIP text
embedding, the diffusion timestep, the noised image embedding, and a learned final
query; the final query's output is the clean image embedding (x0 prediction, trained with
squared error). Image embeddings are diffused standardised, per dimension, with the
training set's statistics, which the model keeps as buffers (saved with its weights).
A dropped caption (classifier-free guidance) is all padding with a learned stand-in for
its CLIP text embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dalle.models import init
from dalle.models.clip import _encoder, transformer_block_starts
from dalle.models.pretrained import PretrainedMixin
from dalle.tokenizers.text import PAD_ID


@dataclass
class PriorConfig:
    text_vocab_size: int = 49408  # the caption tokenizer's (set from it)
    text_len: int = 77  # caption tokens (set from the tokenizer)
    embed_dim: int = 768  # the CLIP's embedding width (set from the CLIP)
    width: int = 2048  # the paper's prior: width 2048, 24 blocks
    layers: int = 24
    heads: int = 32
    mlp_ratio: int = 4
    timesteps: int = 1000  # diffusion steps in training (cosine schedule)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"model.width {self.width} must divide into {self.heads} heads")
        for name in ("text_vocab_size", "text_len", "embed_dim", "layers", "timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, not {getattr(self, name)}")

    @property
    def sequence_length(self) -> int:
        """Caption tokens, then text embedding, timestep, noised embedding, query."""
        return self.text_len + 4


PRIOR_PRESETS: dict[str, PriorConfig] = {
    # The paper's (Table 3): 1B parameters.
    "prior-paper": PriorConfig(),
    # Shapes World and emoji: the demo's CLIP embeddings.
    "prior-small": PriorConfig(
        text_vocab_size=512, text_len=24, embed_dim=64, width=256, layers=4, heads=4
    ),
    # For tests.
    "prior-tiny": PriorConfig(
        text_vocab_size=64, text_len=8, embed_dim=16, width=32, layers=2, heads=2, timesteps=100
    ),
}


class DiffusionPrior(PretrainedMixin, nn.Module, config=PriorConfig):
    def __init__(self, config: PriorConfig) -> None:
        super().__init__(c := config)  # sets config and init_seed (see PretrainedMixin)
        self.token_embedding = nn.Embedding(c.text_vocab_size, c.width)
        self.positions = nn.Parameter(torch.empty(c.sequence_length, c.width))
        self.text_embed_in = nn.Linear(c.embed_dim, c.width)
        self.null_text_embed = nn.Parameter(torch.empty(c.embed_dim))
        self.time_embedding = nn.Embedding(c.timesteps, c.width)
        self.image_embed_in = nn.Linear(c.embed_dim, c.width)
        self.query = nn.Parameter(torch.empty(c.width))
        self.blocks = _encoder(c.width, c.layers, c.heads, c.mlp_ratio)
        self.norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.embed_dim)
        # Per-dimension statistics of the training set's image embeddings (saved).
        self.register_buffer("embed_mean", torch.empty(c.embed_dim))
        self.register_buffer("embed_std", torch.empty(c.embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """Token and time embeddings, positions and the query N(0, 0.02) as in GPT-2;
        the blocks as the CLIP's (depth-scaled normals); PyTorch's defaults elsewhere;
        statistics at the identity until a task sets them. A no-op on meta."""
        if self.query.is_meta:
            return
        c = self.config
        starts = {"token_embedding.weight": init.normal(0.02),
                  "time_embedding.weight": init.normal(0.02),
                  "positions": init.normal(0.02), "query": init.normal(0.02),
                  "null_text_embed": init.normal(c.embed_dim**-0.5)}  # fmt: skip
        starts |= transformer_block_starts("blocks", c.width, c.layers)

        init.initialise_(self, self.init_seed, init.named_starts(starts))
        self.embed_mean.zero_()
        self.embed_std.fill_(1.0)

    def no_weight_decay(self) -> set[str]:
        return {"token_embedding.weight", "time_embedding.weight", "positions"}

    def residual_blocks(self) -> list[nn.Module]:
        return list(self.blocks.layers)

    def standardise(self, embeddings: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings ``[B, D]`` as the prior diffuses them."""
        return (embeddings - self.embed_mean) / self.embed_std

    def unstandardise(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self.embed_std + self.embed_mean

    def forward(
        self,
        noised: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        text_embed: torch.Tensor,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The clean (standardised) image embedding, ``[B, D]``.

        ``noised``: standardised image embeddings at ``timesteps`` ``[B]``; ``text``:
        caption ids ``[B, L]``; ``text_embed``: their unit-norm CLIP text embeddings
        ``[B, D]``; ``drop_text`` ``[B]`` bool: rows whose caption is dropped (padding
        and the learned null embedding: the unconditional prediction).
        """
        if drop_text is not None:
            text = torch.where(drop_text[:, None], torch.full_like(text, PAD_ID), text)
            null = self.null_text_embed.to(text_embed.dtype).expand_as(text_embed)
            text_embed = torch.where(drop_text[:, None], null, text_embed)
        # Unit-norm embeddings have entries of about 1/sqrt(D): scale them to about 1.
        scale = math.sqrt(self.config.embed_dim)
        sequence = torch.cat([
            self.token_embedding(text),  # [B, L, W]
            self.text_embed_in(text_embed * scale)[:, None],
            self.time_embedding(timesteps)[:, None],
            self.image_embed_in(noised)[:, None],
            self.query.expand(len(text), 1, -1).to(noised.dtype),
        ], dim=1) + self.positions  # fmt: skip
        length = sequence.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=text.device)
        h = self.blocks(sequence, mask=causal.to(sequence.dtype), is_causal=True)
        return self.out(self.norm(h[:, -1]))
