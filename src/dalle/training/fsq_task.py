"""Training the FSQ image tokenizer: reconstruction error alone, no codebook losses."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dalle.data.datasets import Batch
from dalle.losses.reconstruction import reconstruction_loss
from dalle.models.fsq import FSQConfig, FSQTokenizer
from dalle.training.image_tokenizer_task import ImageTokenizerEvalConfig, ImageTokenizerTask
from dalle.training.loop import Metrics, OptimConfig, RunConfig, optim_defaults
from dalle.training.parallelize import build_model


@dataclass
class FSQTrainConfig(RunConfig):
    """Everything `dalle train-image-tokenizer --preset fsq-...` needs."""

    preset: str = "fsq-64-8x8"
    model: FSQConfig = field(default_factory=FSQConfig)
    optim: OptimConfig = optim_defaults(
        lr=2e-3, final_lr=2e-5, warmup_steps=100, weight_decay=1e-4, grad_clip=1.0
    )
    eval: ImageTokenizerEvalConfig = field(default_factory=ImageTokenizerEvalConfig)
    init_from_data: bool = True  # start the decoder at the held-out images' median colour
    # Weight of the error in neighbouring-pixel differences beside the pixel error (0: off).
    gradient_weight: float = 0.0
    # Train on random square crops of this side (a multiple of the patch size; 0: whole
    # images). The autoencoder is convolutional: an update on 32x32 crops of 64x64 images
    # costs about a quarter, and the held-out metrics still use whole images.
    crop: int = 0
    # Draw each crop's corner in proportion to its window's foreground share (plus a small
    # floor, so plain windows still occur) instead of uniformly: an update spends less on
    # windows of background alone. Not in either paper.
    crop_foreground: bool = False


class FSQTask(ImageTokenizerTask):
    def __init__(self, config: FSQTrainConfig, device: torch.device) -> None:
        super().__init__(config, build_model(FSQTokenizer, config.model, device), device)

    def training_loss(self, batch: Batch, position: float) -> tuple[torch.Tensor, Metrics]:
        images = self.training_images(batch)
        logits, _ = self.model(images)  # through forward(), where sharding gathers weights
        loss = reconstruction_loss(logits, images, self.config.gradient_weight)
        return loss, {"loss": loss.detach()}
