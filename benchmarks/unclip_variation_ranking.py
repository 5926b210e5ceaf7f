"""Which ranking keeps the variations that keep their source's content? For held-out
Shapes World scenes, draw ``--candidates`` variations of each with the caption the decoder
reads from it (as `unclip_variations_judge.py --caption describe`), judge every draw
(count, colours and shapes against the source's own caption), and score it every way:

- ``clip``: the cosine of its CLIP image embedding with the source's (what variations
  ranked by before);
- ``likelihood``: the transformer decoder's log p(its tokens | read caption, its own
  embedding);
- ``margin``: that likelihood less the best of the read caption's one-word swaps (does the
  draw read back as the caption?);
- sums of those, each standardised over a source's draws.

Then it reports, per ranking, how many of the ``--num`` it keeps pass, beside a random
``--num`` and the most that could (an oracle), over each split. Every ranking is judged
on the same draws.

    python benchmarks/unclip_variation_ranking.py --decoder DIR [--count 128] [--start 0]
        [--candidates 32] [--num 4] [--templates 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dalle.data.datasets import DataConfig, iter_captions, load_images
from dalle.evaluation.shapes_judge import content_only, judge_image, parse_caption
from dalle.sampling.describe import swaps
from dalle.sampling.rerank import standardise
from dalle.sampling.unclip import KnownCaptions, UnCLIP
from dalle.training.loop import resolve_device


def draw_features(pipe: UnCLIP, image: torch.Tensor, read: str, known: KnownCaptions,
                  args: argparse.Namespace, generator: torch.Generator) -> dict:  # fmt: skip
    """One source's draws: each one's scores, and whether it keeps the content."""
    embed = pipe.encode_image(image[None])  # [1, D]
    text = pipe.encode_text([read])[0]  # [1, L]
    rows = args.candidates
    drawn = pipe.draw(text.expand(rows, -1), embed.expand(rows, -1), 25, args.guidance,
                      generator)  # fmt: skip
    embeds = pipe.encode_image(drawn)  # [C, D]
    tokens = pipe.image_tokenizer.encode(drawn).flatten(1)  # [C, T]
    words = read.split()
    others = [s for p in range(len(words)) for s in swaps(read, p, known.slots.words(read, p))]
    likelihood, margin = [], []
    for row in range(rows):
        fits = pipe.caption_log_likelihood(tokens[row], embeds[row], [read, *others])
        likelihood.append(float(fits[0]))
        margin.append(float(fits[0] - fits[1:].max()) if others else 0.0)
    return {"clip": (embeds * embed).sum(-1).cpu(), "likelihood": torch.tensor(likelihood),
            "margin": torch.tensor(margin), "drawn": drawn}  # fmt: skip


RANKINGS = {
    "clip": lambda f: f["clip"],
    "likelihood": lambda f: f["likelihood"],
    "margin": lambda f: f["margin"],
    "clip + likelihood": lambda f: standardise(f["clip"]) + standardise(f["likelihood"]),
    "clip + likelihood / 2": lambda f: standardise(f["clip"]) + standardise(f["likelihood"]) / 2,
    "clip + 2 likelihood": lambda f: standardise(f["clip"]) + 2 * standardise(f["likelihood"]),
    "clip + margin": lambda f: standardise(f["clip"]) + standardise(f["margin"]),
}


def judge_split(pipe: UnCLIP, source: str, known: KnownCaptions, args: argparse.Namespace) -> dict:
    data = DataConfig(source=source, image_size=pipe.image_size, subset="holdout",
                      start=args.start)  # fmt: skip
    images, captions = load_images(data, args.count)
    read = pipe.describe(images, known, templates=args.templates)
    generator = torch.Generator().manual_seed(args.seed)
    kept = dict.fromkeys([*RANKINGS, "random", "oracle"], 0)
    started = time.perf_counter()
    for image, caption, reading in zip(images, captions, read, strict=True):
        features = draw_features(pipe, image, reading, known, args, generator)
        claims = content_only(parse_caption(caption))
        passes = torch.tensor([judge_image(np.ascontiguousarray(d.permute(1, 2, 0).numpy()),
                                           claims).passed for d in features["drawn"]])  # fmt: skip
        for name, rank in RANKINGS.items():
            kept[name] += int(passes[rank(features).argsort(descending=True, stable=True)
                                     [: args.num]].sum())  # fmt: skip
        kept["random"] += float(passes.float().mean()) * args.num
        kept["oracle"] += min(args.num, int(passes.sum()))
    total = args.count * args.num
    print(f"{source}: {args.count} sources in {time.perf_counter() - started:.0f} s")
    return {name: count / total for name, count in kept.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", type=Path, required=True,
                        help="a `dalle train-decoder` folder, transformer decoder")  # fmt: skip
    parser.add_argument("--count", type=int, default=128, help="source scenes per split")
    parser.add_argument("--start", type=int, default=0, help="the first held-out scene")
    parser.add_argument("--candidates", type=int, default=32, help="draws per source")
    parser.add_argument("--num", type=int, default=4, help="draws a ranking keeps")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--describe-count", type=int, default=5000)
    parser.add_argument("--templates", type=int, default=4,
                        help="caption templates the reading searches (describe)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pipe = UnCLIP.from_pretrained(args.decoder, device=resolve_device(args.device),
                                  precision="bf16")  # fmt: skip
    pipe.decoder_temperature = args.temperature
    train = DataConfig(source="shapes", subset="train")
    known = pipe.known_captions(list(iter_captions(train, args.describe_count)))
    splits = {"seen": "shapes", "zeroshot": "shapes:zeroshot"}
    results = {name: judge_split(pipe, source, known, args) for name, source in splits.items()}
    print("| ranking | content kept, seen | zero-shot |\n| --- | --- | --- |")
    for name in results["seen"]:
        print(f"| {name} | {results['seen'][name]:.1%} | {results['zeroshot'][name]:.1%} |")
    if args.json:
        results["settings"] = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
