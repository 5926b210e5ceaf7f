"""Training DALL-E 2's upsampler on pairs made from one image: the image, and the same
image shrunk ``scale`` times (area averaging) and blurred by a random amount.

Evaluation reports, on images kept out of training: the validation loss at fixed noise,
the PSNR of upsampled held-out images against the originals (mean over images) beside
that of a plain bicubic resize, a grid (bicubic above, upsampled, original below), and,
on Shapes World, the share of upsampled images the judge passes against their captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dalle.data.datasets import Batch, load_images
from dalle.data.images import make_grid, shrink
from dalle.evaluation.reconstruction import reconstruction_metrics
from dalle.evaluation.shapes_judge import pass_rate
from dalle.models.upsampler import Upsampler, UpsamplerConfig, gaussian_blur
from dalle.sampling.diffusion import noised, prediction_target, to_model_range, upsample_images
from dalle.training.loop import Metrics, OptimConfig, RunConfig, optim_defaults
from dalle.training.parallelize import build_model


@dataclass
class UpsamplerEvalConfig:
    samples: int = 256  # held-out images for the validation loss
    grid: int = 16  # held-out images upsampled, compared and judged
    sample_steps: int = 50


@dataclass
class UpsamplerTrainConfig(RunConfig):
    """Everything `dalle train-upsampler` needs. The output size is the data's image size."""

    preset: str = "upsampler-small"
    model: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    optim: OptimConfig = optim_defaults(lr=1e-4, final_lr=1e-6, warmup_steps=500,
                                        weight_decay=0.0, grad_clip=1.0)  # fmt: skip
    eval: UpsamplerEvalConfig = field(default_factory=UpsamplerEvalConfig)


class UpsamplerTask:
    def __init__(self, config: UpsamplerTrainConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        config.model = replace(config.model, image_size=config.data.image_size)
        self.model = build_model(Upsampler, config.model, device)
        holdout = replace(config.data, subset="holdout")
        self.eval_images, self.eval_captions = load_images(holdout, config.eval.samples)

    def low_resolution(self, images: torch.Tensor, generator=None, blur: bool = True):
        """uint8 ``images`` -> their shrunk copies in [-1, 1], blurred by a random
        standard deviation in [0, blur_sigma] each when ``blur``."""
        c = self.config.model
        low = to_model_range(shrink(images.to(self.device), c.scale))
        if blur and c.blur_sigma > 0:
            sigma = torch.rand(len(low), generator=generator) * c.blur_sigma
            low = gaussian_blur(low, sigma.to(self.device))
        return low

    def loss(self, images: torch.Tensor, generator=None, blur: bool = True) -> torch.Tensor:
        """Squared error of the prediction for uint8 ``images`` noised to random steps,
        given their low-resolution copies."""
        clean = to_model_range(images.to(self.device))
        low = self.low_resolution(images, generator, blur)
        noisy, t, noise = noised(clean, self.config.model.timesteps, generator)
        c = self.config.model
        prediction = self.model(noisy, t, low)
        return F.mse_loss(prediction.float(), prediction_target(c.prediction, clean, noise, t,
                                                                c.timesteps).float())  # fmt: skip

    def training_loss(self, batch: Batch, position: float) -> tuple[torch.Tensor, Metrics]:
        loss = self.loss(batch.images)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        generator = torch.Generator().manual_seed(0)  # the same noise at every evaluation
        size = self.config.data.batch_size
        losses = [self.loss(chunk, generator, blur=False).item() * len(chunk)
                  for chunk in self.eval_images.split(size)]  # fmt: skip
        metrics = {"val_loss": sum(losses) / len(self.eval_images)}
        n, e = min(self.config.eval.grid, len(self.eval_images)), self.config.eval
        originals = self.eval_images[:n]
        low = self.low_resolution(originals, blur=False)
        upsampled = upsample_images(self.model, low, e.sample_steps, generator).cpu()
        bicubic = resize_uint8(low.cpu(), self.config.model.image_size)
        metrics["psnr"] = reconstruction_metrics(originals, upsampled)["psnr"]
        metrics["psnr_bicubic"] = reconstruction_metrics(originals, bicubic)["psnr"]
        (out_dir / "samples").mkdir(exist_ok=True)
        grid = make_grid(torch.cat([bicubic, upsampled, originals]), columns=n)
        grid.save(out_dir / "samples" / f"upsampled-{step:07d}.png")
        if self.config.data.source.startswith("shapes"):
            metrics["upsampled_judge_pass"] = pass_rate(upsampled, self.eval_captions)
        return metrics

    def export(self, out_dir: Path, model: nn.Module) -> None:
        model.save_pretrained(out_dir)  # type: ignore[operator]


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [-1, 1] resized bicubically to ``size``, as uint8 (the baseline)."""
    big = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
    return ((big.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
