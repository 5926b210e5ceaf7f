"""What training any image tokenizer shares: held-out images, the background start,
reconstruction metrics and grids, and export. A kind of tokenizer adds its loss."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dalle.data.datasets import Batch, load_images
from dalle.data.images import make_grid, random_crops, window_foreground
from dalle.evaluation.reconstruction import collapse_message, reconstruct, tokenizer_metrics

log = logging.getLogger(__name__)


@dataclass
class ImageTokenizerEvalConfig:
    samples: int = 512  # held-out images for reconstruction metrics
    grid: int = 16  # images in the reconstruction grid (originals above reconstructions)


# With ``crop_foreground`` a window's weight is its foreground share plus this floor: one
# of background alone is drawn about 50 times less often than one full of objects
# (Shapes World's 32x32 windows average 19% foreground).
CROP_WEIGHT_FLOOR = 0.02


class ImageTokenizerTask:
    """The loop's task for a model with ``encode``, ``decode``, ``vocab_size`` and
    ``init_output_bias``; subclasses define ``training_loss``."""

    def __init__(self, config: Any, model: nn.Module, device: torch.device) -> None:
        self.config, self.model, self.device = config, model, device
        self.patch = model.config.downsample  # image pixels per token side
        if config.crop and (config.crop > config.data.image_size or config.crop % self.patch):
            raise ValueError(f"crop {config.crop} must be at most data.image_size "
                             f"({config.data.image_size}) and a multiple of the patch size "
                             f"({self.patch})")  # fmt: skip
        if config.crop_foreground and not config.crop:
            raise ValueError("crop_foreground weighs the corners of crops: it needs crop")
        holdout = replace(config.data, subset="holdout")
        self.eval_images, self.eval_captions = load_images(holdout, config.eval.samples)
        if config.init_from_data:
            # [N, 3, H, W] uint8 -> per-channel median over every pixel, [3] in [0, 1]
            pixels = self.eval_images.permute(1, 0, 2, 3).flatten(1).float() / 255
            model.init_output_bias(pixels.median(dim=1).values.to(device))

    def training_images(self, batch: Batch) -> torch.Tensor:
        """The batch's images on the device, ``[B, 3, S, S]`` uint8, as random crops on the
        token grid when ``config.crop`` is set (``S`` = crop, else the image size)."""
        images, size = batch.images, self.config.crop
        if size:
            weights = None
            if self.config.crop_foreground:
                weights = window_foreground(images, size, self.patch) + CROP_WEIGHT_FLOOR
            images = random_crops(images, size, self.patch, weights=weights)
        return images.to(self.device, non_blocking=True)

    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        recon, tokens = reconstruct(self.model, self.eval_images)
        metrics = tokenizer_metrics(self.eval_images, recon, tokens, self.model.vocab_size)
        warning = collapse_message(metrics, self.model.vocab_size)
        if warning:
            log.warning("step %d: %s", step, warning)
        metrics["collapsed"] = float(warning is not None)
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

    def export(self, out_dir: Path, model: nn.Module) -> None:
        model.save_pretrained(out_dir)  # type: ignore[operator]
