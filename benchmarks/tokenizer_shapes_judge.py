"""Does an image tokenizer keep Shapes World images judgeable? Reconstruct held-out
scenes (the holdout subset: never trained on) of the seen-pair split and of the zero-shot
split through their tokens, and judge each against its own caption.

    python benchmarks/tokenizer_shapes_judge.py --tokenizer DIR [--count 1000] [--json out.json]
        [--refine-steps N] [--refine-precision bf16]

The same as `dalle reconstruct --tokenizer DIR --data shapes --subset holdout --out-dir D`
followed by `dalle judge D`, for both splits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dalle.data.datasets import DataConfig
from dalle.evaluation.reconstruction import reconstruct_to_folder
from dalle.evaluation.shapes_judge import judge_directory
from dalle.models.image_tokenizer import load_image_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", "--model", type=Path, required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("outputs/tokenizer_judge"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--refine-steps", type=int, help="steps of encoding by search")
    parser.add_argument("--refine-precision", help="of the search's decoder passes")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_image_tokenizer(
        args.tokenizer, device, args.refine_steps, args.refine_precision
    )
    results = {}
    for name, source in (("seen", "shapes"), ("zeroshot", "shapes:zeroshot")):
        data = DataConfig(source=source, image_size=args.size, subset="holdout")
        start = time.perf_counter()
        metrics = reconstruct_to_folder(tokenizer, data, args.count, args.out / name)
        seconds = time.perf_counter() - start
        report = judge_directory(args.out / name)
        results[name] = {"accuracy": report.accuracy, "per_attribute": report.per_attribute(),
                         **metrics, "reconstruct_s": seconds}  # fmt: skip
        print(name, report.summary(), f"psnr {metrics['psnr']:.2f}, foreground codes used "
              f"{metrics['foreground_codes_used']:.3f}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
