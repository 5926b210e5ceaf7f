"""Does re-ranking help? For each Shapes World prompt, draw --num samples, then judge the
first --keep of them (no ranking) against the best --keep by each scorer, at the same
transformer checkpoint and the same samples.

    python benchmarks/rerank_shapes_judge.py --model RUN [--clip CLIP_RUN] [--prompts 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from dalle.evaluation.shapes_judge import judge_directory
from dalle.evaluation.text_to_image import shapes_prompts
from dalle.sampling.generate import TextToImage, write_images
from dalle.sampling.rerank import CLIPScorer, keep_best, self_scores
from dalle.sampling.sampler import SamplingConfig


def judged_accuracy(images: torch.Tensor, prompts: list[str]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        write_images(images, prompts, Path(folder))
        return judge_directory(Path(folder)).accuracy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--clip", type=Path, help="a `dalle train-clip` folder")
    parser.add_argument("--split", default="zeroshot", choices=["train", "zeroshot"])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--keep", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = TextToImage.from_pretrained(args.model, device)
    size = pipe.image_size
    sampling = SamplingConfig(temperature=args.temperature, guidance_scale=args.guidance)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    scorers = {"self": lambda images, prompts: self_scores(pipe, images, prompts)}
    if args.clip:
        scorers["clip"] = CLIPScorer.from_pretrained(args.clip, device)
    kept: dict[str, list[torch.Tensor]] = {"unranked": [], **{name: [] for name in scorers}}
    prompts = shapes_prompts(args.split, args.prompts, size, args.seed)
    for prompt in prompts:
        images = pipe.generate([prompt] * args.num, sampling, generator, batch_size=64)
        kept["unranked"].append(images[: args.keep])
        for name, scorer in scorers.items():
            kept[name].append(
                keep_best(images, scorer(images, [prompt] * len(images)), args.keep)[0]
            )
    repeated = [p for p in prompts for _ in range(args.keep)]
    results = {name: judged_accuracy(torch.cat(chosen), repeated) for name, chosen in kept.items()}
    print(json.dumps({"split": args.split, "prompts": len(prompts), "num": args.num,
                      "keep": args.keep, "accuracy": results}))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
