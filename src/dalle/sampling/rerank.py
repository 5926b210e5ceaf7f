"""Re-ranking samples: draw many images for a prompt, keep the ones that match it best.

Two scorers:

- a CLIP trained here (``CLIPScorer``): cosine similarity of image and prompt features;
- the transformer itself (``self_scores``): how much more likely the image's tokens are
  with the prompt than without it, ``log p(image | prompt) - log p(image | empty)``. By
  Bayes this is ``log p(prompt | image)`` up to a term that is the same for every image
  of one prompt, so it ranks by the likelihood of the caption given the image. The
  unconditional likelihood is the one the model learned through caption dropout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dalle.models.clip import CLIP
from dalle.sampling.generate import TextToImage
from dalle.tokenizers.text import TextTokenizer


@dataclass
class CLIPScorer:
    model: CLIP
    tokenizer: TextTokenizer
    device: torch.device

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> CLIPScorer:
        """A `dalle train-clip` run folder: the model, and its tokenizer in ``tokenizer/``."""
        directory, device = Path(directory), torch.device(device)
        model = CLIP.from_pretrained(directory, device=device).eval()
        return cls(model, TextTokenizer.load(directory / "tokenizer"), device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity of each uint8 image ``[N, 3, H, W]`` with its prompt, ``[N]``.
        Images of another size are resized to the CLIP's (bilinear, antialiased)."""
        size = self.model.config.image_size
        x = images.to(self.device).float() / 255
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
        text = self.tokenizer.encode(prompts).ids.to(self.device)
        image_features = self.model.encode_image(x)
        text_features = self.model.encode_text(text)
        return (image_features * text_features).sum(dim=-1).cpu()


@torch.no_grad()
def self_scores(pipe: TextToImage, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """``log p(image | prompt) - log p(image | empty caption)`` in nats, ``[N]``."""
    conditional = pipe.log_likelihood(images, prompts)
    unconditional = pipe.log_likelihood(images, prompts, unconditional=True)
    return conditional - unconditional


def keep_best(
    images: torch.Tensor, scores: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` highest-scoring images, best first, and their scores."""
    order = scores.argsort(descending=True)[:keep]
    return images[order], scores[order]


def sample_and_keep(
    pipe: TextToImage,
    prompt: str,
    num_images: int,
    scorer: Callable[[torch.Tensor, list[str]], torch.Tensor] | None = None,
    keep: int = 8,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
    **sample_args: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``num_images`` samples of one prompt, drawn ``batch_size`` at a time; with a
    ``scorer``, only the best ``keep`` are held at any moment (memory stays one batch
    plus ``keep`` images however many are drawn). Returns uint8 ``[N, 3, H, W]``, best
    first when scored, and their scores (None without a scorer). ``on_batch(count)`` is
    told of each batch drawn; ``sample_args`` go to ``pipe`` (sampling, generator,
    prime_image, prime_rows)."""
    kept: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        images = pipe(prompt, count, batch_size=count, **sample_args)
        if on_batch is not None:
            on_batch(count)
        if scorer is None:
            kept = images if kept is None else torch.cat([kept, images])
            continue
        new_scores = scorer(images, [prompt] * count)
        if kept is not None and scores is not None:
            images, new_scores = torch.cat([kept, images]), torch.cat([scores, new_scores])
        kept, scores = keep_best(images, new_scores, keep)
    assert kept is not None  # num_images >= 1
    return kept, scores
