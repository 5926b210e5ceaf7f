"""Training DALL-E 2's diffusion prior on a frozen CLIP's embeddings.

Each batch's captions and images go through the CLIP (frozen, trained here by `dalle
train-clip`); the prior learns to predict the standardised image embedding from a
noised one, the caption and its text embedding. Captions are dropped 10% of the time
(classifier-free guidance). The standardisation's statistics come from the CLIP's image
embeddings of the first training images, the same on every run with the same data.

Evaluation reports, on pairs kept out of training: the validation loss at fixed noise,
and for embeddings the prior samples from held-out captions their cosine similarity with
the true image embedding, beside the same for a shuffled pairing (what an embedding that
ignores its caption would score) and the CLIP text embedding's own similarity.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dalle.data.datasets import Batch, load_images
from dalle.losses.diffusion import clean_sample_loss
from dalle.models.clip import CLIP
from dalle.models.prior import DiffusionPrior, PriorConfig
from dalle.sampling.diffusion import noised, sample_image_embeddings
from dalle.tokenizers.text import TextTokenizer
from dalle.training.loop import Metrics, OptimConfig, RunConfig, optim_defaults
from dalle.training.parallelize import build_model

CLIP_DIR = "clip"  # where an exported prior keeps the CLIP it was trained on


@dataclass
class PriorEvalConfig:
    samples: int = 256  # held-out pairs
    sample_steps: int = 64  # DDIM steps when sampling embeddings for the metrics


@dataclass
class PriorTrainConfig(RunConfig):
    """Everything `dalle train-prior` needs. The caption length, vocabulary and embedding
    width are taken from the CLIP and its tokenizer, whatever the preset says."""

    preset: str = "prior-small"
    model: PriorConfig = field(default_factory=PriorConfig)
    clip: str = ""  # folder of a trained CLIP (`dalle train-clip`), with its tokenizer/
    caption_dropout: float = 0.1  # the paper's
    statistics_samples: int = 2048  # training images whose embeddings set the standardisation
    # The paper (Table 3): Adam beta2 0.96, eps 1e-6, weight decay 6e-2, lr 1.1e-4.
    optim: OptimConfig = optim_defaults(lr=1.1e-4, final_lr=1.1e-6, warmup_steps=500,
                                        betas=[0.9, 0.96], eps=1e-6, weight_decay=6e-2,
                                        grad_clip=1.0)  # fmt: skip
    eval: PriorEvalConfig = field(default_factory=PriorEvalConfig)


def load_frozen_clip(directory: str | Path, device: torch.device) -> tuple[CLIP, TextTokenizer]:
    clip = CLIP.from_pretrained(directory, device=device).eval().requires_grad_(False)
    return clip, TextTokenizer.load(Path(directory) / "tokenizer")


def fit_to_clip(model: Any, clip: CLIP, tokenizer: TextTokenizer, **more: Any) -> Any:
    """A DALL-E 2 stage's model config with its CLIP's caption vocabulary and length and
    embedding width (and ``more`` on top)."""
    return replace(model, text_vocab_size=tokenizer.vocab_size, text_len=tokenizer.max_length,
                   embed_dim=clip.config.embed_dim, **more)  # fmt: skip


class PriorTask:
    def __init__(self, config: PriorTrainConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self.clip, self.tokenizer = load_frozen_clip(config.clip, device)
        config.model = fit_to_clip(config.model, self.clip, self.tokenizer)
        self.model = build_model(DiffusionPrior, config.model, device)
        self.mean, self.std = self.embedding_statistics()
        holdout = replace(config.data, subset="holdout")
        images, self.eval_captions = load_images(holdout, config.eval.samples)
        self.eval_text = self.tokenizer.encode(self.eval_captions).ids.to(device)
        self.eval_text_embed, self.eval_image_embed = self.embed(images, self.eval_text)

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP embeddings ``[B, D]`` of uint8 images ``[B, 3, S, S]``."""
        images = images.to(self.device, non_blocking=True)
        return torch.cat([self.clip.encode_image(b) for b in images.split(256)]).float()

    @torch.no_grad()
    def embed(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm CLIP (text, image) embeddings ``[B, D]`` of captions and uint8 images."""
        text_embed = torch.cat([self.clip.encode_text(t) for t in text.split(256)]).float()
        return text_embed, self.image_embeddings(images)

    @torch.no_grad()
    def embedding_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and standard deviation of the first training images' CLIP
        image embeddings (the data's own order, so the same on every run)."""
        images, _ = load_images(self.config.data, self.config.statistics_samples)
        embeddings = self.image_embeddings(images)
        return embeddings.mean(dim=0), embeddings.std(dim=0).clamp_min(1e-6)

    def standardise(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (embeddings - self.mean) / self.std

    def training_loss(self, batch: Batch, position: float) -> tuple[torch.Tensor, Metrics]:
        text = self.tokenizer.encode(batch.captions).ids.to(self.device)
        text_embed, image_embed = self.embed(batch.images, text)
        clean = self.standardise(image_embed)
        noisy, t, _ = noised(clean, self.config.model.timesteps)
        drop = torch.rand(len(text), device=self.device) < self.config.caption_dropout
        prediction = self.model(noisy, t, text, text_embed, drop_text=drop)
        loss = clean_sample_loss(prediction, clean)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        generator = torch.Generator().manual_seed(0)  # the same noise at every evaluation
        clean = self.standardise(self.eval_image_embed)
        noisy, t, _ = noised(clean, self.config.model.timesteps, generator)
        loss = clean_sample_loss(self.model(noisy, t, self.eval_text, self.eval_text_embed), clean)
        self._set_statistics(self.model)
        steps = self.config.eval.sample_steps
        sampled = sample_image_embeddings(
            self.model, self.eval_text, self.eval_text_embed, steps, generator=generator
        )
        true = self.eval_image_embed
        shuffled = true.roll(1, dims=0)
        return {
            "val_loss": loss.item(),
            "image_cosine": F.cosine_similarity(sampled, true).mean().item(),
            "image_cosine_shuffled": F.cosine_similarity(sampled, shuffled).mean().item(),
            "text_embed_image_cosine": F.cosine_similarity(self.eval_text_embed, true)
            .mean()
            .item(),
        }

    @torch.no_grad()
    def _set_statistics(self, model: nn.Module) -> None:
        model.embed_mean.copy_(self.mean)  # type: ignore[operator]
        model.embed_std.copy_(self.std)  # type: ignore[operator]

    def export(self, out_dir: Path, model: nn.Module) -> None:
        """``model`` with its standardisation statistics, and in ``clip/`` the CLIP it
        reads captions with (and its tokenizer)."""
        self._set_statistics(model)
        model.save_pretrained(out_dir)  # type: ignore[operator]
        self.clip.save_pretrained(out_dir / CLIP_DIR)
        self.tokenizer.save(out_dir / CLIP_DIR / "tokenizer")
