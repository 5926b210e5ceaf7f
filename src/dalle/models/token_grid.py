"""What every image tokenizer derives from its config: vocabulary, patch size, grid."""

from __future__ import annotations

from typing import Any


class TokenGridMixin:
    """``vocab_size``, ``downsample`` and ``token_grid`` of a model whose ``config`` has
    them (the image-tokenizer interface of ``models.image_tokenizer``)."""

    config: Any

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def downsample(self) -> int:
        """Image pixels per token, along each side."""
        return self.config.downsample

    def token_grid(self, image_size: int) -> int:
        """Tokens along each side of an ``image_size`` image."""
        return self.config.token_grid(image_size)
