"""Training CLIP on image-caption pairs, with the health metrics that tell it is learning.

Evaluation reports, on pairs kept out of training: the contrastive loss, image-to-text
retrieval R@1 (the top-scoring caption among all held-out captions is the image's own),
and zero-shot colour and shape accuracy on single-object Shapes World images, classified
by the prompts ``a {color} {shape}`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from dalle.data.datasets import SHAPES_HOLDOUT_START, Batch, load_images
from dalle.data.hard_negatives import hard_negatives
from dalle.data.shapes_world import COLORS, SHAPES, render_scene, sample_scene
from dalle.losses.clip import clip_loss
from dalle.models.clip import CLIP, CLIPConfig
from dalle.models.image_tokenizer import load_image_tokenizer
from dalle.tokenizers.text import TextTokenizer
from dalle.training import distributed
from dalle.training.loop import Metrics, OptimConfig, RunConfig, optim_defaults
from dalle.training.parallelize import build_model


@dataclass
class CLIPEvalConfig:
    samples: int = 512  # held-out pairs: validation loss and retrieval R@1
    # Single-object Shapes World images for zero-shot colour and shape accuracy; 0: skip.
    shapes_zero_shot: int = 500


@dataclass
class HardNegativesConfig:
    """A second caption per image, its own with one word swapped within a group (see
    :mod:`dalle.data.hard_negatives`); no groups, no negatives."""

    groups: list[list[str]] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)  # phrases a negative may not hold


@dataclass
class CLIPTrainConfig(RunConfig):
    """Everything `dalle train-clip` needs. Vocabulary, caption length and image size are
    taken from the tokenizer and the data, whatever the preset says."""

    preset: str = "clip-small"
    model: CLIPConfig = field(default_factory=CLIPConfig)
    tokenizer: str = ""  # folder with tokenizer.json
    # An image tokenizer folder: train and evaluate on its reconstructions (encoded and
    # decoded) instead of the images, so the CLIP learns the look of what a transformer
    # over that tokenizer draws, the images it will re-rank. Empty: the images as they are.
    image_tokenizer: str = ""
    bpe_dropout: float = 0.0
    hard_negatives: HardNegativesConfig = field(default_factory=HardNegativesConfig)
    # open_clip's ViT defaults: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.2.
    optim: OptimConfig = optim_defaults(
        lr=5e-4, final_lr=5e-6, warmup_steps=200, betas=[0.9, 0.98], eps=1e-6, weight_decay=0.2
    )
    eval: CLIPEvalConfig = field(default_factory=CLIPEvalConfig)


def zero_shot_prompts() -> list[tuple[str, str, str]]:
    """(colour, shape, prompt) for every colour-shape pair, held-out pairs included."""
    return [(c, s, f"a {c} {s}") for c in COLORS for s in SHAPES]


def single_object_scenes(count: int, image_size: int, seed: int = 0) -> list:
    """``count`` one-object scenes from both splits, outside every training index."""
    scenes, index = [], SHAPES_HOLDOUT_START
    while len(scenes) < count:
        for split in ("train", "zeroshot"):
            scene = sample_scene(seed, index, image_size, split)  # type: ignore[arg-type]
            if len(scene.objects) == 1 and len(scenes) < count:
                scenes.append(scene)
        index += 1
    return scenes


@torch.no_grad()
def retrieval_at_1(
    model: CLIP, images: torch.Tensor, text: torch.Tensor, captions: list[str]
) -> float:
    """Share of images whose best caption among all ``captions`` reads as their own (a
    duplicate caption elsewhere in the set counts as right)."""
    image_features = torch.cat([model.encode_image(b) for b in images.split(256)])
    text_features = torch.cat([model.encode_text(t) for t in text.split(256)])
    best = (image_features @ text_features.T).argmax(dim=1).tolist()
    return sum(captions[b] == c for b, c in zip(best, captions, strict=True)) / len(captions)


class CLIPTask:
    def __init__(self, config: CLIPTrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.tokenizer = TextTokenizer.load(config.tokenizer)
        # replace() validates again: the data's image size must divide into patches.
        config.model = m = replace(
            config.model,
            text_vocab_size=self.tokenizer.vocab_size,
            text_len=self.tokenizer.max_length,
            image_size=config.data.image_size,
        )
        self.model = build_model(CLIP, m, device)
        self.image_tokenizer = None
        if config.image_tokenizer:
            self.image_tokenizer = load_image_tokenizer(config.image_tokenizer, device)
        holdout = replace(config.data, subset="holdout")
        self.eval_images, self.eval_captions = load_images(holdout, config.eval.samples)
        self.eval_images = self.as_seen(self.eval_images)
        self.eval_text = self.tokenizer.encode(self.eval_captions).ids
        self.zero_shot_images, self.zero_shot_labels = torch.empty(0), []
        if config.eval.shapes_zero_shot:
            scenes = single_object_scenes(config.eval.shapes_zero_shot, m.image_size)
            self.zero_shot_images = self.as_seen(torch.stack(
                [torch.from_numpy(render_scene(s)).permute(2, 0, 1) for s in scenes]
            ))  # fmt: skip
            self.zero_shot_labels = [(s.objects[0].color, s.objects[0].shape) for s in scenes]
            prompts = zero_shot_prompts()
            self.prompt_labels = [(c, s) for c, s, _ in prompts]
            self.prompt_text = self.tokenizer.encode([p for _, _, p in prompts]).ids

    @torch.no_grad()
    def as_seen(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, S, S]`` images as the CLIP trains on them: the image tokenizer's
        reconstructions when it has one, else unchanged; on the device they came on."""
        if self.image_tokenizer is None:
            return images
        tokenizer = self.image_tokenizer
        return torch.cat([tokenizer.decode(tokenizer.encode(b.to(self.device))).to(images.device)
                          for b in images.split(256)])  # fmt: skip

    def training_loss(self, batch: Batch, position: float) -> tuple[torch.Tensor, Metrics]:
        images = self.as_seen(batch.images.to(self.device, non_blocking=True))
        captions = list(batch.captions)
        negatives = self.config.hard_negatives
        if negatives.groups:
            captions += hard_negatives(captions, negatives.groups, negatives.forbidden)
        text = self.tokenizer.encode(captions, dropout=self.config.bpe_dropout).ids
        # [B, T] over the global batch: under torchrun every rank's features are gathered,
        # and every rank computes the same loss (the gradients of its own samples flow
        # back through the gather, which sums them over ranks; sharding then averages).
        logits = self.model(images, text.to(self.device), gather=distributed.gather_batch)
        loss = clip_loss(logits.float(), len(images), len(text))
        with torch.no_grad():
            image = torch.arange(len(logits), device=logits.device)
            own = image // len(images) * len(text) + image % len(images)
            accuracy = (logits.argmax(dim=1) == own).float().mean()
            scale = self.model.logit_scale.detach()
            scale = scale.full_tensor() if isinstance(scale, DTensor) else scale
            scale = scale.clamp(max=self.model.config.logit_scale_max).exp()
        return loss, {"loss": loss.detach(), "batch_accuracy": accuracy, "logit_scale": scale}

    @torch.no_grad()
    def zero_shot_accuracy(self) -> dict[str, float]:
        text_features = self.model.encode_text(self.prompt_text.to(self.device))
        image_features = torch.cat(
            [self.model.encode_image(b.to(self.device)) for b in self.zero_shot_images.split(256)]
        )
        best = (image_features @ text_features.T).argmax(dim=1).tolist()
        predicted = [self.prompt_labels[b] for b in best]
        pairs = list(zip(predicted, self.zero_shot_labels, strict=True))
        return {
            "zero_shot_color": sum(p[0] == t[0] for p, t in pairs) / len(pairs),
            "zero_shot_shape": sum(p[1] == t[1] for p, t in pairs) / len(pairs),
        }

    @torch.no_grad()
    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        batch_size = self.config.data.batch_size
        images, text = self.eval_images.to(self.device), self.eval_text.to(self.device)
        losses = [clip_loss(self.model(i, t).float()).item()
                  for i, t in zip(images.split(batch_size), text.split(batch_size), strict=True)
                  if len(i) > 1]  # fmt: skip
        metrics = {
            "val_loss": sum(losses) / max(len(losses), 1),
            "retrieval_r1": retrieval_at_1(self.model, images, text, self.eval_captions),
        }
        if self.zero_shot_labels:
            metrics.update(self.zero_shot_accuracy())
        return metrics

    def export(self, out_dir: Path, model: nn.Module) -> None:
        """``model`` (the trained weights, whole) and, in ``tokenizer/``, the tokenizer
        it reads captions with."""
        model.save_pretrained(out_dir)  # type: ignore[operator]
        self.tokenizer.save(out_dir / "tokenizer")
