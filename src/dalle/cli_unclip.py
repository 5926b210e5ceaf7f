"""The command line of DALL-E 2 (unCLIP): text to image, variations, interpolation and
text diffs, over a prior folder and a decoder folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle.cli_support import (
    add_prompt_arguments,
    check_output_dir,
    check_output_file,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
    read_image,
)


def _pipeline(args: argparse.Namespace, prior: bool):
    from dalle.sampling.unclip import UnCLIP
    from dalle.training.loop import resolve_device

    pipe = UnCLIP.from_pretrained(args.decoder, args.prior if prior else None,
                                  resolve_device(args.device),
                                  upsampler=args.upsampler)  # fmt: skip
    pipe.upsampler_steps = args.upsampler_steps
    pipe.decoder_temperature = args.decoder_temperature
    return pipe


def _generator(args: argparse.Namespace):
    import torch

    return torch.Generator().manual_seed(args.seed)


def _write_grid(images, path: Path, columns: int) -> None:
    from dalle.sampling.generate import save_grid

    save_grid(images, path, columns=columns)
    print(f"wrote a grid of {len(images)} images to {path}")


def cmd_unclip(args: argparse.Namespace) -> int:
    """Prompt -> prior -> CLIP image embedding -> decoder, ``--num`` images a prompt."""
    from dalle.sampling.generate import write_images

    if args.out:
        check_output_file(args.out, "--out")
    if args.out_dir:
        check_output_dir(args.out_dir, "--out-dir")
    prompts = list(args.prompt)
    if args.prompts:
        lines = args.prompts.read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError("give a prompt, or --prompts FILE")
    pipe = _pipeline(args, prior=True)
    keep = min(args.keep, args.num) if args.keep else None
    out = pipe(prompts, args.num, keep, prior_guidance_scale=args.prior_guidance,
               decoder_guidance_scale=args.decoder_guidance,
               prior_num_inference_steps=args.prior_steps,
               decoder_num_inference_steps=args.decoder_steps, generator=_generator(args),
               batch_size=args.batch_size)  # fmt: skip
    images = out.images.flatten(0, 1)
    captions = [p for p in prompts for _ in range(out.images.shape[1])]
    if args.out_dir:
        write_images(images, captions, args.out_dir)
        print(f"wrote {len(images)} images with their prompts to {args.out_dir}")
    if args.out:
        _write_grid(images, args.out, columns=out.images.shape[1] if len(prompts) > 1 else 8)
    return 0


def known_captions(source: str, count: int) -> list[str]:
    """Captions to read an image's caption from: a ``.txt`` file's lines, or the first
    ``count`` training-subset captions of a data source (Shapes World, a folder, shards)."""
    from dalle.data.datasets import DataConfig, iter_captions

    path = Path(source)
    if path.suffix == ".txt":
        if not path.is_file():
            raise ValueError(f"--describe: no caption file {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        captions = [line.strip() for line in lines if line.strip()]
    else:
        captions = list(iter_captions(DataConfig(source=source, subset="train"), count))
    if not captions:
        raise ValueError(f"--describe: no captions in {source}")
    return captions


def cmd_variations(args: argparse.Namespace) -> int:
    import torch

    check_output_file(args.out, "--out")
    if args.describe and args.caption:
        raise ValueError("give --caption or --describe, not both")
    pipe = _pipeline(args, prior=False)
    image = read_image(args.image, pipe.image_size, "image")
    caption = args.caption or ""
    if args.describe:
        known = known_captions(args.describe, args.describe_count)
        caption = pipe.describe(image[None], known)[0]
        reader = {"clip": "the CLIP", "decoder": "the decoder"}[pipe.reader()]
        print(f"{reader} reads the image as: {caption}")
    images = pipe.variations(image, args.num, caption, args.decoder_guidance,
                             args.decoder_steps, args.eta, _generator(args),
                             candidates=args.candidates, rank=args.rank)  # fmt: skip
    _write_grid(torch.cat([image[None], images]), args.out, columns=args.num + 1)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")
    pipe = _pipeline(args, prior=False)
    first = read_image(args.first, pipe.image_size, "first image")
    second = read_image(args.second, pipe.image_size, "second image")
    images = pipe.interpolate(first, second, args.num, args.decoder_guidance, args.decoder_steps,
                              _generator(args))  # fmt: skip
    _write_grid(images, args.out, columns=args.num)
    return 0


def cmd_text_diff(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")
    pipe = _pipeline(args, prior=False)
    image = read_image(args.image, pipe.image_size, "image")
    images = pipe.text_diff(
        image, args.source, args.target, args.num, args.max_weight, args.decoder_guidance,
        args.decoder_steps, _generator(args),
    )  # fmt: skip
    _write_grid(images, args.out, columns=args.num)
    return 0


def _decoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--decoder", type=Path, required=True, help="a `dalle train-decoder` folder"
    )
    parser.add_argument("--decoder-guidance", type=finite_float, default=3.0,
                        help="the decoder's classifier-free guidance; 1: none")  # fmt: skip
    parser.add_argument("--decoder-steps", type=positive_int, default=50,
                        help="DDIM steps (a token decoder's unmasking steps; a transformer "
                        "decoder draws one token a step)")  # fmt: skip
    parser.add_argument("--decoder-temperature", type=positive_float, default=1.0,
                        help="token and transformer decoders: the temperature of their token "
                        "draws (lower: more conservative)")  # fmt: skip
    parser.add_argument("--upsampler", type=Path,
                        help="a `dalle train-upsampler` folder: enlarge every image")  # fmt: skip
    parser.add_argument("--upsampler-steps", type=positive_int, default=25,
                        help="the upsampler's DDIM steps")  # fmt: skip
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--device", default="auto")


def add_unclip_commands(commands) -> None:
    unclip = commands.add_parser("unclip", help="DALL-E 2: images from a caption (prior + decoder)")
    add_prompt_arguments(unclip)
    unclip.add_argument("--prior", type=Path, required=True, help="a `dalle train-prior` folder")
    unclip.add_argument("--keep", type=positive_int, help="keep the best K by the CLIP")
    unclip.add_argument("--prior-guidance", type=finite_float, default=1.0,
                        help="the prior's guidance; the paper found it hurt (1: none)")  # fmt: skip
    unclip.add_argument("--prior-steps", type=positive_int, default=64, help="DDIM steps")
    _decoder_args(unclip)
    unclip.set_defaults(func=cmd_unclip)

    variations = commands.add_parser("variations", help="DALL-E 2: variations of an image")
    variations.add_argument("image", type=Path)
    variations.add_argument("--num", type=positive_int, default=8)
    variations.add_argument("--caption", help="also condition on this caption")
    variations.add_argument("--describe", metavar="CAPTIONS",
                            help="also condition on a caption read from the image (by a "
                            "transformer decoder's likelihood, else the CLIP), searched from "
                            "these known captions: a .txt file, one a line, or a data "
                            "source's training captions (shapes, a folder, shards)")  # fmt: skip
    variations.add_argument("--describe-count", type=positive_int, default=5000,
                            help="how many of a source's captions --describe reads")  # fmt: skip
    variations.add_argument("--eta", type=positive_float, default=1.0,
                            help="DDIM eta: 1 as random as DDPM (default)")  # fmt: skip
    variations.add_argument("--candidates", type=positive_int,
                            help="draw this many and keep the --num that --rank ranks first "
                            "(default: draw --num, keep all)")  # fmt: skip
    variations.add_argument("--rank", choices=("auto", "clip", "clip+likelihood"),
                            default="auto",
                            help="--candidates: rank by closeness to the image in the CLIP's "
                            "embedding, or by that and a transformer decoder's likelihood of "
                            "each draw (auto: the latter where the decoder has one and "
                            "there is a caption, --caption or --describe)")  # fmt: skip
    variations.add_argument("--out", type=Path, required=True, help="grid PNG: the image first")
    _decoder_args(variations)
    variations.set_defaults(func=cmd_variations)

    interpolate = commands.add_parser("interpolate", help="DALL-E 2: from one image to another")
    interpolate.add_argument("first", type=Path)
    interpolate.add_argument("second", type=Path)
    interpolate.add_argument("--num", type=positive_int, default=8)
    interpolate.add_argument("--out", type=Path, required=True, help="grid PNG")
    _decoder_args(interpolate)
    interpolate.set_defaults(func=cmd_interpolate)

    diff = commands.add_parser("text-diff", help="DALL-E 2: move an image toward a new caption")
    diff.add_argument("image", type=Path)
    diff.add_argument("--source", required=True, help="a caption of the image as it is")
    diff.add_argument("--target", required=True, help="the caption to move it toward")
    diff.add_argument("--num", type=positive_int, default=5)
    diff.add_argument("--max-weight", type=positive_float, default=0.5,
                      help="how far toward the target the last image goes (0.25-0.5)")  # fmt: skip
    diff.add_argument("--out", type=Path, required=True, help="grid PNG")
    _decoder_args(diff)
    diff.set_defaults(func=cmd_text_diff)
