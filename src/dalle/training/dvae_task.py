"""Training the discrete VAE: the run's config, its loss on a batch, and evaluation."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dalle.config import ConfigError, load_config, peek_key
from dalle.data.datasets import Batch, DataConfig, load_images
from dalle.data.images import make_grid
from dalle.losses.dvae import dvae_loss, gumbel_softmax
from dalle.models.dvae import DVAE_PRESETS, DiscreteVAE, DVAEConfig
from dalle.training.loop import LoopConfig, OptimConfig
from dalle.training.schedules import cosine_anneal


@dataclass
class DVAEObjectiveConfig:
    """The paper's schedules (App. A.2); the step counts scale down for small runs."""

    kl_weight: float = 6.6  # final beta
    kl_warmup_steps: int = 5000  # beta rises 0 -> kl_weight on a cosine over these updates
    temperature_start: float = 1.0
    temperature_end: float = 1 / 16
    temperature_steps: int = 150_000  # tau anneals on a cosine over these updates
    # Not in the paper (dalle-pytorch and taming's Gumbel quantiser offer it): feed the
    # decoder exact one-hot samples, with the relaxed sample's gradient.
    straight_through: bool = False
    # The paper's "logit_laplace", or "gaussian" with a fixed std on mapped pixels. On
    # Shapes World's flat colours the logit-Laplace learns a wide scale on object pixels
    # and leaves their colour to chance for many updates; the fixed-scale Gaussian cannot
    # buy its loss down that way and gets colours right several times sooner
    # (BENCHMARKS.md). Not in the paper.
    likelihood: str = "logit_laplace"
    pixel_std: float = 0.07

    def __post_init__(self) -> None:
        if self.likelihood not in ("logit_laplace", "gaussian"):
            raise ValueError(
                f"objective.likelihood must be logit_laplace or gaussian, not {self.likelihood!r}"
            )
        if self.pixel_std <= 0:
            raise ValueError("objective.pixel_std must be positive")


@dataclass
class DVAEEvalConfig:
    samples: int = 512  # held-out images for reconstruction metrics
    grid: int = 16  # images in the reconstruction grid (originals above reconstructions)


@dataclass
class DVAETrainConfig:
    """Everything `dalle train-vae` needs; `preset` chooses the model's starting shape."""

    preset: str = "dvae-small"
    model: DVAEConfig = field(default_factory=DVAEConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(subset="train"))
    objective: DVAEObjectiveConfig = field(default_factory=DVAEObjectiveConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1.2e-4, final_lr=1.25e-6, weight_decay=1e-4)
    )
    eval: DVAEEvalConfig = field(default_factory=DVAEEvalConfig)
    # Start the decoder at the median colour of the held-out images (their background):
    # keeps the codebook from collapsing early on mostly-background data. Not in the paper.
    init_from_data: bool = True


def load_dvae_train_config(path: str | Path | None, overrides: Sequence[str]) -> DVAETrainConfig:
    preset = peek_key("preset", path, overrides) or DVAETrainConfig.preset
    if preset not in DVAE_PRESETS:
        raise ConfigError(f"unknown dVAE preset {preset!r}; choose from {sorted(DVAE_PRESETS)}")
    base = DVAETrainConfig(preset=preset, model=copy.deepcopy(DVAE_PRESETS[preset]))
    return load_config(DVAETrainConfig, path, overrides, base=base)


def codebook_usage(tokens: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Share of the vocabulary used and perplexity of the token histogram."""
    counts = torch.bincount(tokens.flatten(), minlength=vocab_size).float()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    return {"codes_used": float((counts > 0).float().mean()), "perplexity": math.exp(entropy)}


def reconstruction_metrics(original: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
    """MSE on [0, 1] pixels and PSNR (mean of per-image PSNR), uint8 inputs ``[B, 3, H, W]``."""
    a, b = original.float() / 255, recon.float() / 255
    per_image = ((a - b) ** 2).flatten(1).mean(dim=1)  # [B]
    psnr = (10 * torch.log10(1 / per_image.clamp_min(1e-10))).mean()
    return {"mse": float(per_image.mean()), "psnr": float(psnr)}


class DVAETask:
    def __init__(self, config: DVAETrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.model = DiscreteVAE(config.model).to(device)
        holdout = replace(config.data, subset="holdout")
        self.eval_images, self.eval_captions = load_images(holdout, config.eval.samples)
        if config.init_from_data:
            # [N, 3, H, W] uint8 -> per-channel median over every pixel, [3] in [0, 1]
            pixels = self.eval_images.permute(1, 0, 2, 3).flatten(1).float() / 255
            self.model.init_output_bias(pixels.median(dim=1).values.to(device))

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]  # biases
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip

    def schedules(self, step: int) -> tuple[float, float]:
        o = self.config.objective
        kl_weight = cosine_anneal(step, o.kl_warmup_steps, 0.0, o.kl_weight)
        temperature = cosine_anneal(
            step, o.temperature_steps, o.temperature_start, o.temperature_end
        )
        return kl_weight, temperature

    def training_loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch.images.to(self.device, non_blocking=True)
        kl_weight, temperature = self.schedules(step)
        o = self.config.objective

        def sample(logits: torch.Tensor) -> torch.Tensor:
            # relaxed (or, straight-through, exact) one-hot sample, [B, V, h, w]
            return gumbel_softmax(logits, temperature, hard=o.straight_through)

        # Through forward(), which is where sharding gathers weights: [B, 3, H, W] mapped
        # pixels, [B, V, h, w] logits, [B, 6, H, W] decoder stats.
        x, logits, stats = self.model(images, sample)
        out = dvae_loss(x, stats, logits, kl_weight, o.likelihood, o.pixel_std)
        with torch.no_grad():
            relaxed = self.model.stats_to_images(stats)
            mse = ((relaxed - images.float() / 255) ** 2).mean()
        return out.loss, {
            "loss": out.loss.item(), "nll": out.nll.item(), "kl": out.kl.item(),
            "kl_weight": kl_weight, "temperature": temperature, "relaxed_mse": float(mse),
        }  # fmt: skip

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, batch_size: int = 128
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard reconstructions (argmax tokens, decoded) and the tokens, on CPU."""
        recons, tokens = [], []
        for chunk in images.split(batch_size):
            t = self.model.encode(chunk.to(self.device))
            tokens.append(t.cpu())
            recons.append(self.model.decode(t).cpu())
        return torch.cat(recons), torch.cat(tokens)

    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        recon, tokens = self.reconstruct(self.eval_images)
        metrics = reconstruction_metrics(self.eval_images, recon)
        metrics.update(codebook_usage(tokens, self.config.model.vocab_size))
        n = min(self.config.eval.grid, len(recon))
        columns = min(8, n)
        rows = []
        for start in range(0, n, columns):  # originals above their reconstructions
            rows += [self.eval_images[start : start + columns], recon[start : start + columns]]
        grid = make_grid(torch.cat(rows), columns=columns)
        (out_dir / "samples").mkdir(exist_ok=True)
        grid.save(out_dir / "samples" / f"recon-{step:07d}.png")
        grid.save(out_dir / "recon-latest.png")
        return metrics

    def export(self, out_dir: Path) -> None:
        self.model.save_pretrained(out_dir)
