"""How well a text-to-image model draws Shapes World prompts, by the judge.

The prompts are captions of Shapes World scenes from an index range that no training run
reads (``SHAPES_HOLDOUT_START`` on), so a model is judged on prompts it was not trained
on: from the ``train`` split they are seen-combination prompts, from ``zeroshot`` they
hold a colour-shape pair never seen in training.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from dalle.data.datasets import SHAPES_HOLDOUT_START
from dalle.data.images import make_grid
from dalle.data.shapes_world import sample_scene
from dalle.evaluation.shapes_judge import judge_directory
from dalle.sampling.generate import TextToImage, write_images
from dalle.sampling.sampler import SamplingConfig

# uint8 images [N, 3, H, W] and their prompts -> a score per image, higher is better.
Scorer = Callable[[torch.Tensor, list[str]], torch.Tensor]


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
    scorer: Scorer | None = None,
    candidates: int = 1,
) -> dict[str, float]:
    """One image per prompt, written as ``NNNN.png`` + ``NNNN.txt`` under ``folder`` with a
    grid of the first 32 beside it (``folder_grid.png``), then judged.

    With a ``scorer`` (a CLIP), ``candidates`` images are drawn per prompt and the best
    one is kept. Returns the judge's pass rate of the kept images and, for comparison,
    of each prompt's first candidate (what sampling without re-ranking gives).
    """
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    repeated = [p for p in prompts for _ in range(candidates)]
    drawn = pipe.generate(repeated, sampling, generator, batch_size=batch_size)
    drawn = drawn.view(len(prompts), candidates, *drawn.shape[1:])  # [P, C, 3, H, W]
    first = drawn[:, 0]
    if scorer is not None and candidates > 1:
        scores = scorer(drawn.flatten(0, 1), repeated).view(len(prompts), candidates)
        images = drawn[torch.arange(len(prompts)), scores.argmax(dim=1)]
    else:
        images = first
    write_images(images, prompts, folder)
    make_grid(images[:32], columns=8).save(folder.with_name(f"{folder.name}_grid.png"))
    result = {"pass_rate": judge_directory(folder).accuracy}
    if scorer is not None and candidates > 1:
        with tempfile.TemporaryDirectory() as scratch:
            write_images(first, prompts, Path(scratch))
            result["pass_rate_first_candidate"] = judge_directory(Path(scratch)).accuracy
    return result
