"""Where do the demo's failures come from: the transformer or the re-ranker?

For Shapes World test prompts, draws ``--num`` samples each, judges every one, and reports:
the pass rate of a single draw; the rate at which *any* of the draws passes (what a
perfect re-ranker would keep); and what the CLIP and the transformer's own likelihood
keep. Each split is also broken down into one-object and two-object prompts.

    python benchmarks/rerank_oracle.py --model DIR --clip DIR [--prompts 128] [--num 8]
        [--temperature T --guidance G]   (default: the model's recommended settings)

Prints one JSON line per split (seen, zero-shot).
"""

from __future__ import annotations

import argparse
import json

import torch

from dalle.evaluation.shapes_judge import judge_image, parse_caption
from dalle.evaluation.text_to_image import shapes_prompts
from dalle.sampling.generate import TextToImage
from dalle.sampling.rerank import CLIPScorer, self_scores
from dalle.sampling.sampler import SamplingConfig


def kept_rate(passed: torch.Tensor, scores: torch.Tensor) -> float:
    """Pass rate of each prompt's best-scored draw; ``passed``, ``scores``: ``[P, N]``."""
    if not len(passed):
        return float("nan")
    return passed[torch.arange(len(passed)), scores.argmax(dim=1)].mean().item()


def summary(passed: torch.Tensor, scorers: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {"prompts": len(passed), "single_draw": passed.mean().item(),
           "first_draw": passed[:, 0].mean().item(),
           "any_draw": passed.max(dim=1).values.mean().item()}  # fmt: skip
    out.update({f"kept_by_{name}": kept_rate(passed, s) for name, s in scorers.items()})
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipe = TextToImage.from_pretrained(args.model)
    sampling = pipe.defaults
    if args.temperature is not None or args.guidance is not None:
        sampling = SamplingConfig(
            temperature=args.temperature or sampling.temperature,
            guidance_scale=args.guidance or sampling.guidance_scale,
        )
    clip = CLIPScorer.from_pretrained(args.clip)
    size = pipe.image_size
    for split in ("train", "zeroshot"):
        prompts = shapes_prompts(split, args.prompts, size, args.seed)
        repeated = [p for p in prompts for _ in range(args.num)]
        generator = torch.Generator().manual_seed(args.seed)
        images = pipe.generate(repeated, sampling, generator, batch_size=64)
        verdicts = [judge_image(im.permute(1, 2, 0).numpy(), c).passed
                    for im, c in zip(images, repeated, strict=True)]  # fmt: skip
        passed = torch.tensor(verdicts, dtype=torch.float).view(len(prompts), args.num)
        scorers = {
            "clip": clip(images, repeated).view(len(prompts), args.num),
            "self": torch.cat([self_scores(pipe, images[i : i + 64], repeated[i : i + 64])
                               for i in range(0, len(repeated), 64)]).view(len(prompts), -1),
        }  # fmt: skip
        two = torch.tensor([len(parse_caption(p).objects) == 2 for p in prompts])
        record = {
            "split": "seen" if split == "train" else "zeroshot",
            "sampling": vars(sampling), "num": args.num, "all": summary(passed, scorers),
        }  # fmt: skip
        for name, rows in (("one_object", ~two), ("two_objects", two)):
            record[name] = summary(passed[rows], {k: s[rows] for k, s in scorers.items()})
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
