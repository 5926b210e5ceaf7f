"""How often does a trained text-to-image model draw what a Shapes World prompt says?
One image per prompt for seen-combination and zero-shot prompts that no
training run reads, each judged against its prompt.

    python benchmarks/dalle_shapes_judge.py --model RUN_DIR [--count 500] [--guidance 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dalle.evaluation.shapes_judge import judge_directory
from dalle.evaluation.text_to_image import generate_and_judge, shapes_prompts
from dalle.sampling.generate import TextToImage
from dalle.sampling.sampler import SamplingConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--count", type=int, default=500, help="prompts per split")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/dalle_judge"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = TextToImage.from_pretrained(args.model, device)
    size = pipe.image_size
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.guidance)
    results: dict = {"sampling": vars(sampling)}
    for name, split in (("seen", "train"), ("zeroshot", "zeroshot")):
        start = time.perf_counter()
        prompts = shapes_prompts(split, args.count, size, args.seed)
        generate_and_judge(pipe, prompts, args.out / name, sampling, args.seed)
        report = judge_directory(args.out / name)
        seconds = time.perf_counter() - start
        results[name] = {"accuracy": report.accuracy, "per_attribute": report.per_attribute(),
                         "images": report.total, "seconds": seconds}  # fmt: skip
        print(name, report.summary(), f"({seconds:.0f}s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
