"""How well a text-to-image model draws Shapes World prompts, by the judge.

The prompts are captions of Shapes World scenes from an index range that no training run
reads (``SHAPES_HOLDOUT_START`` on), so a model is judged on prompts it was not trained
on: from the ``train`` split they are seen-combination prompts, from ``zeroshot`` they
hold a colour-shape pair never seen in training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dalle.data.datasets import SHAPES_HOLDOUT_START
from dalle.data.images import make_grid
from dalle.data.shapes_world import sample_scene
from dalle.evaluation.shapes_judge import JudgeReport, judge_directory
from dalle.sampling.generate import TextToImage, write_images
from dalle.sampling.sampler import SamplingConfig


def shapes_prompts(split: str, count: int, image_size: int = 64, seed: int = 0) -> list[str]:
    """Captions of ``count`` Shapes World scenes that no training run draws."""
    return [sample_scene(seed, SHAPES_HOLDOUT_START + i, image_size, split).caption  # type: ignore[arg-type]
            for i in range(count)]  # fmt: skip


def generate_and_judge(
    pipe: TextToImage,
    prompts: list[str],
    folder: Path,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> JudgeReport:
    """One image per prompt, written as ``NNNN.png`` + ``NNNN.txt`` under ``folder`` with a
    grid of the first 32 beside it (``folder.png``), then judged."""
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    images = pipe.generate(prompts, sampling, generator, batch_size=batch_size)
    write_images(images, prompts, folder)
    make_grid(images[:32], columns=8).save(folder.with_name(f"{folder.name}_grid.png"))
    return judge_directory(folder)
