"""How well a text-to-image model draws Shapes World prompts, by the judge.

The prompts are captions of Shapes World scenes from an index range that no training run
reads (``SHAPES_HOLDOUT_START`` on), so a model is judged on prompts it was not trained
on: from the ``train`` split they are seen-combination prompts, from ``zeroshot`` they
hold a colour-shape pair never seen in training.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from dalle.data.datasets import SHAPES_HOLDOUT_START
from dalle.data.images import make_grid
from dalle.data.shapes_world import sample_scene
from dalle.evaluation.shapes_judge import judge_directory
from dalle.sampling.generate import TextToImage, write_images
from dalle.sampling.sampler import SamplingConfig

# Where validation prompts start within the holdout indices: prompts for choosing settings
# never coincide with the (test) prompts a model is finally judged on.
VALIDATION_OFFSET = 1_000_000


def shapes_prompts(
    split: str, count: int, image_size: int = 64, seed: int = 0, validation: bool = False
) -> list[str]:
    """Captions of ``count`` Shapes World scenes that no training run draws: test prompts,
    or, with ``validation``, a disjoint set for choosing settings."""
    first = SHAPES_HOLDOUT_START + (VALIDATION_OFFSET if validation else 0)
    return [sample_scene(seed, first + i, image_size, split).caption  # type: ignore[arg-type]
            for i in range(count)]  # fmt: skip


def sampling_candidates(
    temperatures: tuple[float, ...] = (1.0, 0.7, 0.5, 0.35),
    guidance_scales: tuple[float, ...] = (1.0, 2.0, 3.0),
) -> list[SamplingConfig]:
    """The grid :func:`choose_sampling` searches: the paper's setting (temperature 1, no
    guidance) and sharper, guided ones."""
    return [SamplingConfig(temperature=t, guidance_scale=g)
            for t in temperatures for g in guidance_scales]  # fmt: skip


def choose_sampling(
    pipe: TextToImage,
    candidates: list[SamplingConfig],
    count: int = 24,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[SamplingConfig, dict]:
    """The candidate whose first samples pass the judge most often on validation prompts
    (``count`` seen and ``count`` zero-shot, disjoint from the test prompts), and a record
    of every candidate's pass rates. Ties go to the earlier candidate."""
    size = pipe.image_size
    prompts = {split: shapes_prompts(split, count, size, seed, validation=True)
               for split in ("train", "zeroshot")}  # fmt: skip
    table, best, best_rate = [], candidates[0], -1.0
    with tempfile.TemporaryDirectory() as scratch:
        for i, sampling in enumerate(candidates):
            rates = {split: generate_and_judge(pipe, p, Path(scratch) / f"{i}-{split}", sampling,
                                               seed, batch_size=batch_size)["pass_rate"]
                     for split, p in prompts.items()}  # fmt: skip
            mean = sum(rates.values()) / len(rates)
            table.append({**asdict(sampling), "seen": rates["train"],
                          "zeroshot": rates["zeroshot"]})  # fmt: skip
            if mean > best_rate:
                best, best_rate = sampling, mean
    record = {"by": "Shapes World judge, first sample of each validation prompt",
              "prompts_per_split": count, "candidates": table}  # fmt: skip
    return best, record


def generate_and_judge(
    pipe: TextToImage,
    prompts: list[str],
    folder: Path,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    batch_size: int = 64,
    candidates: int = 1,
) -> dict[str, float]:
    """One image per prompt, written as ``NNNN.png`` + ``NNNN.txt`` under ``folder`` with a
    grid of the first 32 beside it (``folder_grid.png``), then judged.

    With ``candidates`` > 1, that many images are drawn per prompt and the pipeline's
    re-ranker keeps the best. Returns the judge's pass rate of the kept images and, for
    comparison, of each prompt's first candidate (what sampling without re-ranking gives).
    """
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    ranked = candidates > 1
    done = list(pipe.iter_prompts(prompts, candidates, 1 if ranked else None, sampling,
                                  generator, batch_size=batch_size))  # fmt: skip
    images = torch.stack([kept[0] for _, kept, _, _ in done])
    write_images(images, prompts, folder)
    make_grid(images[:32], columns=8).save(folder.with_name(f"{folder.name}_grid.png"))
    result = {"pass_rate": judge_directory(folder).accuracy}
    if ranked:
        with tempfile.TemporaryDirectory() as scratch:
            write_images(torch.stack([first for *_, first in done]), prompts, Path(scratch))
            result["pass_rate_first_candidate"] = judge_directory(Path(scratch)).accuracy
    return result
