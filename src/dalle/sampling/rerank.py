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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dalle.models.clip import CLIP
from dalle.tokenizers.text import TextTokenizer

if TYPE_CHECKING:
    from dalle.sampling.generate import TextToImage


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

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[N, 3, H, W]`` as the CLIP's input: float ``[N, 3, S, S]`` in
        [0, 1] on its device, resized to its size when they differ (bilinear,
        antialiased). The one place images enter this CLIP."""
        size = self.model.config.image_size
        x = images.to(self.device).float() / 255
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
        return x

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm features of uint8 images ``[N, 3, H, W]``, ``[N, D]`` on the device."""
        return self.model.encode_image(self.prepare(images))

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm features of captions, ``[N, D]`` on the device."""
        return self.model.encode_text(self.tokenizer.encode(prompts).ids.to(self.device))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity of each uint8 image ``[N, 3, H, W]`` with its prompt, ``[N]``."""
        similarity = (self.image_features(images) * self.text_features(prompts)).sum(dim=-1)
        return similarity.cpu()


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
    order = torch.argsort(scores, descending=True, stable=True)[:keep]
    return images[order], scores[order]


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Scores ``[N]`` shifted and scaled to mean 0 and standard deviation 1 (all 0 where
    they are all equal), so that scores on different scales can be added."""
    centred = scores.float() - scores.float().mean()
    spread = centred.std() if len(scores) > 1 else 0.0
    return centred / spread if spread > 0 else torch.zeros_like(centred)
