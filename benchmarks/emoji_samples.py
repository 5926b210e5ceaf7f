"""Samples of an emoji-noto-64 pipeline run for held-out captions, beside the real emoji.

    python benchmarks/emoji_samples.py RUN DATA [--captions 16] [--num 16] [--keep 4]

RUN is a folder of benchmarks/emoji_pipeline.sh (``dalle/`` and ``clip/`` inside). For
``--captions`` held-out emoji spread evenly over the held-out tenth (never trained on; in
key order, whose neighbours are alike, such as runs of flags), ``--num``
samples of its caption are drawn and the CLIP keeps the best ``--keep``. Writes
``RUN/holdout_samples.png`` (one row per caption: the real emoji, then the kept samples,
best first), the kept images as ``RUN/holdout_samples/NNNN.png`` + ``.txt``, and
``RUN/holdout_samples.json`` with the captions and settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dalle.data.datasets import Batch, DataConfig, load_samples
from dalle.data.images import make_grid
from dalle.sampling.generate import TextToImage, write_images
from dalle.sampling.sampler import SamplingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data")
    parser.add_argument("--captions", type=int, default=16)
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--keep", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipe = TextToImage.from_pretrained(args.run / "dalle", reranker=args.run / "clip")
    sampling = SamplingConfig(temperature=args.temperature, guidance_scale=args.guidance)
    every = load_samples(DataConfig(source=args.data, subset="holdout"), 100_000)
    step = max(1, len(every) // args.captions)
    picked = list(range(0, len(every), step))[: args.captions]
    held_out = Batch(every.images[picked], [every.captions[i] for i in picked],
                     [every.keys[i] for i in picked], [])  # fmt: skip
    generator = torch.Generator().manual_seed(args.seed)
    rows, kept_best, scores = [], [], []
    drawn = pipe.iter_prompts(held_out.captions, args.num, args.keep, sampling, generator)
    for real, (_, kept, kept_scores, _) in zip(held_out.images, drawn, strict=True):
        rows += [real, *kept]
        kept_best.append(kept[0])
        scores.append([round(float(s), 4) for s in kept_scores])
    make_grid(torch.stack(rows), columns=1 + args.keep).save(args.run / "holdout_samples.png")
    write_images(torch.stack(kept_best), held_out.captions, args.run / "holdout_samples")
    record = {
        "captions": held_out.captions, "keys": held_out.keys, "clip_scores": scores,
        "num": args.num, "keep": args.keep, "sampling": vars(sampling), "seed": args.seed,
    }  # fmt: skip
    (args.run / "holdout_samples.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.run / 'holdout_samples.png'}")


if __name__ == "__main__":
    main()
