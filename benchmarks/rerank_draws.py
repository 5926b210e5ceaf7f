"""Re-rankers compared on the same draws: how often each keeps a sample that passes.

Step 1 draws ``--num`` samples for each of 128 validation and 128 test prompts per split
(seen, zero-shot) from a transformer with its recommended settings, judges every one,
and saves them; step 2 scores any number of CLIP folders on those saved draws, for the
first 8 and for all of them, so that CLIPs (and numbers of draws) are compared on
identical samples. Choose on the validation prompts; report the test ones.

    python benchmarks/rerank_draws.py draw --model DIR --out draws.pt [--num 32]
    python benchmarks/rerank_draws.py score draws.pt CLIP_DIR [CLIP_DIR ...]
        [--model DIR --self-weights 0.5 1 2]

``score`` prints one JSON line per CLIP: kept pass rate by set and number of draws, and
what a perfect re-ranker would keep ("any"). With ``--model`` (the transformer that drew)
it also scores by the transformer's own likelihood ratio (``self_scores``) and by each mix
``z(CLIP) + w * z(self)``, both standardised over each prompt's draws so that ``w`` weighs
their rankings, not their units.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from dalle.evaluation.shapes_judge import judge_image
from dalle.evaluation.text_to_image import shapes_prompts
from dalle.sampling.generate import TextToImage
from dalle.sampling.rerank import CLIPScorer, keep_best, self_scores

SETS = [
    (f"{'val' if v else 'test'}_{s}", s, v) for v in (True, False) for s in ("train", "zeroshot")
]


def draw(args: argparse.Namespace) -> None:
    pipe = TextToImage.from_pretrained(args.model)
    saved = {}
    for name, split, validation in SETS:
        prompts = shapes_prompts(split, args.prompts, pipe.image_size, args.seed, validation)
        repeated = [p for p in prompts for _ in range(args.num)]
        generator = torch.Generator().manual_seed(args.seed)
        images = pipe.generate(repeated, pipe.defaults, generator, batch_size=64)
        passed = torch.tensor([judge_image(im.permute(1, 2, 0).numpy(), c).passed
                               for im, c in zip(images, repeated, strict=True)])  # fmt: skip
        saved[name] = {"prompts": prompts, "images": images,
                       "passed": passed.view(len(prompts), args.num)}  # fmt: skip
        print(name, f"single draw passes {passed.float().mean():.3f}", flush=True)
    torch.save(saved, args.out)


def kept_rate(passed: torch.Tensor, scores: torch.Tensor) -> float:
    """Pass rate of each prompt's best-scored draw (``keep_best``); both ``[P, N]``."""
    kept = [passed[i][keep_best(torch.arange(len(s)), s, 1)[0]].item()
            for i, s in enumerate(scores)]  # fmt: skip
    return sum(kept) / len(kept)


def scored(scorer: Callable[[torch.Tensor, list[str]], torch.Tensor], d: dict) -> torch.Tensor:
    """``scorer(images, prompts)`` over every saved draw of one set, ``[P, N]``."""
    prompts, num = d["prompts"], d["passed"].shape[1]
    repeated = [p for p in prompts for _ in range(num)]
    chunks = range(0, len(repeated), 512)
    return torch.cat([scorer(d["images"][i : i + 512], repeated[i : i + 512])
                      for i in chunks]).view(len(prompts), num)  # fmt: skip


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """Each prompt's scores ``[P, N]`` at mean 0 and standard deviation 1 over its draws."""
    return (scores - scores.mean(dim=1, keepdim=True)) / (scores.std(dim=1, keepdim=True) + 1e-6)


def kept_rates(passed: torch.Tensor, scores: torch.Tensor) -> dict[str, float]:
    num = passed.shape[1]
    return {f"kept_of_{n}": round(kept_rate(passed[:, :n], scores[:, :n]), 4)
            for n in sorted({8, num}) if n <= num}  # fmt: skip


@torch.no_grad()
def score(args: argparse.Namespace) -> None:
    saved = torch.load(args.draws, weights_only=False)
    own = {}
    if args.model:
        pipe = TextToImage.from_pretrained(args.model)
        own = {name: scored(lambda im, p: self_scores(pipe, im, p), d)
               for name, d in saved.items()}  # fmt: skip
        print(json.dumps({"scorer": "self", **{n: kept_rates(saved[n]["passed"], s)
                                               for n, s in own.items()}}), flush=True)  # fmt: skip
    for folder in args.clips:
        clip = CLIPScorer.from_pretrained(folder)
        record: dict = {"clip": folder}
        for name, d in saved.items():
            scores = scored(clip, d)
            record[name] = kept_rates(d["passed"], scores)
            record[name]["any"] = round(d["passed"].max(dim=1).values.float().mean().item(), 4)
            for w in args.self_weights if own else []:
                mixed = standardised(scores) + w * standardised(own[name])
                record[name][f"self_{w:g}"] = kept_rates(d["passed"], mixed)
        print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("draw")
    d.add_argument("--model", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--num", type=int, default=32)
    d.add_argument("--prompts", type=int, default=128)
    d.add_argument("--seed", type=int, default=0)
    s = commands.add_parser("score")
    s.add_argument("draws")
    s.add_argument("clips", nargs="+")
    s.add_argument("--model", help="the transformer that drew: also score by its own likelihood")
    s.add_argument("--self-weights", type=float, nargs="*", default=[0.25, 0.5, 1.0, 2.0])
    args = parser.parse_args()
    draw(args) if args.command == "draw" else score(args)


if __name__ == "__main__":
    main()
