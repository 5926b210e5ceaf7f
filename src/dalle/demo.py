"""`make demo`: the main job on built-in data, stage by stage, reusing finished stages.

Stages so far: Shapes World samples for seen (train) and held-out (zero-shot) prompts,
a caption tokenizer trained on the train split, and the judge's verdict on the samples.
The model stages join as they land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dalle.data.datasets import DataConfig, iter_captions
from dalle.data.images import make_grid
from dalle.data.writers import write_shapes_world
from dalle.evaluation.shapes_judge import judge_directory, load_rgb
from dalle.tokenizers.text import TextTokenizer, TokenizerConfig

DEMO_SIZE = 64
DEMO_SAMPLES = 64  # per split


def _stage(name: str, done: bool) -> bool:
    print(f"[demo] {name}: {'reusing finished stage' if done else 'running'}", flush=True)
    return not done


def _grid(folder: Path, out: Path, count: int = 32) -> None:
    paths = sorted(folder.glob("*.png"))[:count]
    images = torch.stack([torch.from_numpy(load_rgb(p)).permute(2, 0, 1) for p in paths])
    make_grid(images, columns=8).save(out)


def run_demo(out: Path, seed: int = 0) -> int:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    tokenizer_dir = out / "tokenizer"
    if _stage(
        "caption tokenizer (BPE on 20,000 Shapes World captions)",
        (tokenizer_dir / "tokenizer.json").exists(),
    ):
        captions = iter_captions(DataConfig(source="shapes", seed=seed), limit=20_000)
        TextTokenizer.train(captions, TokenizerConfig(vocab_size=512, max_length=32)).save(
            tokenizer_dir
        )
    tokenizer = TextTokenizer.load(tokenizer_dir)

    results = {}
    for name, split in (("seen", "train"), ("heldout", "zeroshot")):
        folder = out / name
        marker = folder / ".complete"
        if _stage(
            f"{name} samples ({split} split, {DEMO_SAMPLES} at {DEMO_SIZE}px)", marker.exists()
        ):
            write_shapes_world(folder, DEMO_SAMPLES, DEMO_SIZE, split, seed=seed + 1)  # type: ignore[arg-type]
            marker.touch()
        _grid(folder, out / f"{name}_grid.png")
        report = judge_directory(folder)
        results[name] = report.to_json()
        print(f"[demo] judge on {name} samples: {report.summary()}")

    example = next(iter(sorted((out / "seen").glob("*.txt")))).read_text()
    ids = tokenizer.encode([example])
    print(f"[demo] tokenizer: vocabulary {tokenizer.vocab_size}; {example!r} -> "
          f"{ids.ids[0, : int(ids.lengths[0])].tolist()}")  # fmt: skip
    summary = {name: {k: r[k] for k in ("images", "passed", "accuracy", "per_attribute")}
               for name, r in results.items()}  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"[demo] grids: {out / 'seen_grid.png'}, {out / 'heldout_grid.png'}; "
          f"results: {out / 'results.json'} ({time.perf_counter() - start:.1f}s)")  # fmt: skip
    return 0
