"""Training the FSQ image tokenizer: reconstruction error alone, no codebook losses."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dalle.config import load_config
from dalle.data.datasets import Batch, DataConfig
from dalle.models.fsq import FSQ_PRESETS, FSQConfig, FSQTokenizer, reconstruction_loss
from dalle.training.image_tokenizer_task import ImageTokenizerEvalConfig, ImageTokenizerTask
from dalle.training.loop import LoopConfig, OptimConfig


@dataclass
class FSQTrainConfig:
    """Everything `dalle train-image-tokenizer --preset fsq-...` needs."""

    preset: str = "fsq-64-8x8"
    model: FSQConfig = field(default_factory=FSQConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(subset="train"))
    loop: LoopConfig = field(default_factory=LoopConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=2e-3, final_lr=2e-5, warmup_steps=100,
                                            weight_decay=1e-4, grad_clip=1.0)
    )  # fmt: skip
    eval: ImageTokenizerEvalConfig = field(default_factory=ImageTokenizerEvalConfig)
    init_from_data: bool = True  # start the decoder at the held-out images' median colour


def load_fsq_train_config(path: str | Path | None, overrides: Sequence[str], preset: str):
    base = FSQTrainConfig(preset=preset, model=copy.deepcopy(FSQ_PRESETS[preset]))
    return load_config(FSQTrainConfig, path, overrides, base=base)


class FSQTask(ImageTokenizerTask):
    def __init__(self, config: FSQTrainConfig, device: torch.device) -> None:
        super().__init__(config, FSQTokenizer(config.model).to(device), device)

    def training_loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch.images.to(self.device, non_blocking=True)
        logits, _ = self.model(images)  # through forward(), where sharding gathers weights
        loss = reconstruction_loss(logits, images)
        return loss, {"loss": loss.item()}
