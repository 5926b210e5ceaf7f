"""Do unCLIP's variations keep what their source shows? For held-out Shapes World scenes
(the holdout subset of the seen-pair and zero-shot splits: never trained on), draw
variations of each (its CLIP image embedding decoded with stochastic DDIM, eta 1, no
caption) and judge every variation against the source's caption twice: for its content
(count, and each object's colour and shape together: what the issue asks a variation to
keep) and strictly (size, position and relation must survive too).

    python benchmarks/unclip_variations_judge.py --decoder DIR [--count 32] [--num 4]
        [--steps 25] [--temperature 1] [--candidates N] [--caption none|describe|true]
        [--reader auto|decoder|clip] [--rank auto|clip|clip+likelihood] [--start N]
        [--out outputs/variations_judge] [--json out.json]

Writes each split's variations as NNNN.png + NNNN.txt (the source's caption) and a grid
(sources in the first column) under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dalle.data.datasets import DataConfig, iter_captions, load_images
from dalle.data.images import make_grid
from dalle.evaluation.shapes_judge import JudgeReport, judge_directory, pass_rate
from dalle.sampling.generate import write_images
from dalle.sampling.unclip import KnownCaptions, UnCLIP
from dalle.training.loop import resolve_device


def summary(report: JudgeReport) -> dict:
    """A judge report's figures, without its list of failures."""
    return {k: v for k, v in report.to_json().items() if k != "failures"}


def describe_sources(
    pipe: UnCLIP, images: torch.Tensor, known: KnownCaptions, args: argparse.Namespace, out: Path
) -> list[str]:
    """Each source's caption as ``args.reader`` reads it, starting from ``known``."""
    started = time.perf_counter()
    described = pipe.describe(images, known, reader=args.reader)
    print(f"{out.name}: {pipe.reader(args.reader)} read {len(images)} captions from "
          f"{len(known.captions)} known ones in {time.perf_counter() - started:.1f} s")  # fmt: skip
    return described


def judge_described(images: torch.Tensor, described: list[str], out: Path) -> dict:
    """Does each source show what its read caption says (count, colours and shapes)?"""
    folder = out.with_name(f"{out.name}_described")
    write_images(images, described, folder)
    report = judge_directory(folder, content=True)
    print(f"sources against the captions read from them: {report.summary()}")
    return summary(report)


def judge_split(
    pipe: UnCLIP, source: str, known: KnownCaptions | None, args: argparse.Namespace, out: Path
) -> dict:
    data = DataConfig(source=source, image_size=pipe.image_size, subset="holdout",
                      start=args.start)  # fmt: skip
    images, captions = load_images(data, args.count)
    given, result = [""] * len(images), {}
    if args.caption == "true":
        given = list(captions)
    elif known is not None:
        given = describe_sources(pipe, images, known, args, out)
        result["described"] = judge_described(images, given, out)
    generator = torch.Generator().manual_seed(args.seed)
    drawn = [pipe.variations(image, args.num, caption, steps=args.steps, generator=generator,
                             decoder_guidance_scale=args.guidance, candidates=args.candidates,
                             rank=args.rank)
             for image, caption in zip(images, given, strict=True)]  # fmt: skip
    variations = torch.cat(drawn)  # [count * num, 3, S, S], a source's variations together
    write_images(variations, [c for c in captions for _ in range(args.num)], out)
    rows = [torch.cat([image[None], v]) for image, v in zip(images[:8], drawn[:8], strict=True)]
    make_grid(torch.cat(rows), columns=args.num + 1).save(out.with_name(f"{out.name}_grid.png"))
    content = judge_directory(out, content=True)
    report = judge_directory(out)
    result |= summary(report)
    result["content"] = summary(content)
    result["sources_pass"] = pass_rate(images, captions)
    print(f"{out.name}: sources pass {result['sources_pass']:.1%}")
    print(f"content kept (count, colours, shapes): {content.summary()}")
    print(f"all stated attributes kept: {report.summary()}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--decoder", type=Path, required=True, help="a `dalle train-decoder` folder"
    )
    parser.add_argument("--count", type=int, default=32, help="source scenes per split")
    parser.add_argument("--num", type=int, default=4, help="variations per source")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="token decoders: their draws' temperature")  # fmt: skip
    parser.add_argument(
        "--candidates",
        type=int,
        help="draw this many per source, keep the --num that --rank ranks first",
    )
    parser.add_argument("--rank", choices=("auto", "clip", "clip+likelihood"), default="auto",
                        help="--candidates: how draws are ranked (variation_scores)")  # fmt: skip
    parser.add_argument(
        "--caption",
        choices=("none", "describe", "true"),
        default="none",
        help="the decoder's caption: none (the paper's variations), one read from the "
        "source (UnCLIP.describe), or the source's own (an upper bound)",
    )
    parser.add_argument("--reader", choices=("auto", "decoder", "clip"), default="auto",
                        help="--caption describe: who reads the caption")  # fmt: skip
    parser.add_argument("--describe-count", type=int, default=5000,
                        help="known captions (seen-pair training split) to read from")  # fmt: skip
    parser.add_argument("--start", type=int, default=0,
                        help="the first held-out scene of each split to judge")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("outputs/variations_judge"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pipe = UnCLIP.from_pretrained(args.decoder, device=resolve_device(args.device),
                                  precision="bf16")  # fmt: skip
    pipe.decoder_temperature = args.temperature
    splits = {"seen": "shapes", "zeroshot": "shapes:zeroshot"}
    # Known captions to read from: the seen-pair training split's, so never a zero-shot
    # pair's caption.
    known = None
    if args.caption == "describe":
        train = DataConfig(source="shapes", subset="train")
        known = pipe.known_captions(list(iter_captions(train, args.describe_count)))
    results = {name: judge_split(pipe, source, known, args, args.out / name)
               for name, source in splits.items()}  # fmt: skip
    results["settings"] = {k: str(v) for k, v in vars(args).items()}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
