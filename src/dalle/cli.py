"""The ``dalle`` command line: each subcommand is a thin call into the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dalle.cli_support import (
    DEBUG_ENV,
    OneLineParser,
    add_prompt_arguments,
    check_output_dir,
    check_output_file,
    debug_requested,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    read_image,
    report,
)
from dalle.cli_unclip import add_unclip_commands
from dalle.config import load_config
from dalle.data.datasets import DataConfig
from dalle.data.images import DEFAULT_MAX_PIXELS
from dalle.interrupts import InterruptGuard
from dalle.precision import PRECISIONS

if TYPE_CHECKING:
    from dalle.sampling.sampler import SamplingConfig

log = logging.getLogger("dalle")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file for this command's settings")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. data.image_size=64",
    )


def _flag_overrides(pairs: dict[str, object]) -> list[str]:
    """Command-line flags as dotted overrides (flags left unset are not applied)."""
    out = []
    for key, value in pairs.items():
        if value is None:
            continue
        out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return out


# ----------------------------------------------------------------------------- data


def cmd_data_shapes(args: argparse.Namespace) -> int:
    from dalle.data.writers import write_shapes_world

    start = time.perf_counter()
    files = write_shapes_world(
        args.out,
        args.count,
        args.size,
        args.split,
        args.seed,
        args.format,
        args.shard_size,
        args.workers,
    )
    what = f"{len(files)} shards" if args.format == "wds" else f"{args.count} samples"
    print(f"wrote {what} of Shapes World ({args.split}, {args.size}px, seed {args.seed}) "
          f"to {args.out} in {time.perf_counter() - start:.1f}s")  # fmt: skip
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Reads a whole source through the loader and reports what would be skipped."""
    from tqdm import tqdm

    from dalle.data.datasets import make_loader, new_skip_log, open_source

    config = DataConfig(source=args.source, image_size=args.size, batch_size=64, shuffle=False,
                        num_workers=args.workers, count=args.limit, subset=args.subset,
                        holdout_fraction=args.holdout_fraction,
                        max_image_pixels=args.max_pixels)  # fmt: skip
    dataset = open_source(config)
    skips = new_skip_log(dataset)
    samples = 0
    for batch in tqdm(
        make_loader(dataset, config), desc="reading", unit="batch", disable=args.json, leave=False
    ):
        samples += len(batch.captions)
        skips.add(batch.skipped)
        if args.limit is not None and samples >= args.limit:
            break
    if args.json:
        print(json.dumps({"samples": samples, "skipped": skips.to_json()}, indent=2))
    else:
        subset = f" ({args.subset} subset)" if args.subset != "all" else ""
        print(f"read {samples} samples from {args.source}{subset} at {args.size}x{args.size}")
        print(skips.summary())
    return 0


# ----------------------------------------------------------------------------- judge


def cmd_judge(args: argparse.Namespace) -> int:
    from dalle.evaluation.shapes_judge import judge_directory

    report = judge_directory(args.directory, content=args.content_only)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.summary())
    return 0


# ----------------------------------------------------------------------------- reconstruct


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """An image tokenizer's reconstructions of a source, for `dalle judge` or the eye."""
    from dalle.evaluation.reconstruction import reconstruct_to_folder
    from dalle.models.image_tokenizer import load_image_tokenizer
    from dalle.training.loop import resolve_device

    check_output_dir(args.out_dir, "--out-dir")
    device = resolve_device(args.device)
    tokenizer = load_image_tokenizer(args.tokenizer, device, args.refine_steps,
                                     args.refine_precision)  # fmt: skip
    data = DataConfig(source=args.data, image_size=args.size, subset=args.subset, shuffle=False)
    metrics = reconstruct_to_folder(tokenizer, data, args.count, args.out_dir)
    if args.json:
        print(json.dumps(metrics))
    else:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"wrote reconstructions to {args.out_dir}: {shown}")
    return 0


def cmd_tokenize_data(args: argparse.Namespace) -> int:
    """Encodes a data set once into shards of (token grid, caption) for `dalle train`."""
    from dalle.data.token_shards import shards_pattern, write_token_shards
    from dalle.files import folder_hash
    from dalle.models.image_tokenizer import load_image_tokenizer
    from dalle.training.loop import resolve_device

    check_output_dir(args.out, "--out")
    device = resolve_device(args.device)
    tokenizer = load_image_tokenizer(args.tokenizer, device, args.refine_steps,
                                     args.refine_precision)  # fmt: skip
    data = DataConfig(source=args.data, image_size=args.size, subset=args.subset,
                      count=args.count, num_workers=args.workers)  # fmt: skip
    start = time.perf_counter()
    meta = write_token_shards(tokenizer, folder_hash(args.tokenizer), data, args.out,
                              args.shard_size, progress=not args.json)  # fmt: skip
    if args.json:
        print(json.dumps(meta))
        return 0
    grid, seconds = meta["token_grid"], time.perf_counter() - start
    print(f"encoded {meta['samples']} samples into {meta['shards']} shard(s) of {grid}x{grid} "
          f"tokens in {seconds:.0f}s; skipped {meta['skipped']['total']}")  # fmt: skip
    print(f"train on them with: dalle train --data '{shards_pattern(args.out)}' "
          f"--image-tokenizer {args.tokenizer} data.image_size={args.size} ...")  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- tokenizer


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from dalle.training.caption_tokenizer import TokenizerTrainConfig, train_caption_tokenizer

    overrides = _flag_overrides({
        "data.source": args.data,
        "tokenizer.vocab_size": args.vocab_size,
        "tokenizer.max_length": args.max_length,
        "tokenizer.max_captions": args.max_captions,
    })  # fmt: skip
    config = load_config(TokenizerTrainConfig, args.config, [*overrides, *args.overrides])
    check_output_dir(args.out, "--out")
    start = time.perf_counter()
    print(train_caption_tokenizer(config, Path(args.out)))
    print(f"saved to {Path(args.out) / 'tokenizer.json'} ({time.perf_counter() - start:.1f}s)")
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from dalle.tokenizers.text import TextTokenizer

    tokenizer = TextTokenizer.load(args.tokenizer)
    encoded = tokenizer.encode(args.text)
    for text, ids, length in zip(args.text, encoded.ids, encoded.lengths, strict=True):
        tokens = ids[: int(length)].tolist()
        print(json.dumps({"text": text, "ids": tokens, "decoded": tokenizer.decode(tokens)}))
    return 0


# ----------------------------------------------------------------------------- models


def cmd_model_info(args: argparse.Namespace) -> int:
    from dalle.models.sizes import parameter_counts, sharded_memory
    from dalle.training.stages import stage_of_preset

    model = stage_of_preset(args.preset).build_model(args.preset)
    counts = parameter_counts(model)
    info: dict = {"preset": args.preset, "parameters": counts,
                  "config": dataclasses.asdict(model.config)}  # type: ignore[attr-defined]  # fmt: skip
    if args.gpus:
        info["gpus"] = args.gpus
        info["bytes_per_gpu"] = sharded_memory(model, args.gpus)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.preset} ({type(model).__name__})")
    label = max(len(part) for part in counts)
    for part, count in counts.items():
        print(f"  {part:<{label}} {count:>15,d} parameters")
    if args.gpus:
        print(f"training memory per GPU, FSDP2 over {args.gpus} GPUs (activations not included):")
        label = max(len(part) for part in info["bytes_per_gpu"])
        for part, size in info["bytes_per_gpu"].items():
            print(f"  {part:<{label}} {size / 2**30:>10.2f} GiB")
    return 0


def cmd_convert_openai_dvae(args: argparse.Namespace) -> int:
    """OpenAI's released dVAE (encoder.pkl + decoder.pkl) as a model folder."""
    from dalle.models.openai_dvae import load_openai_dvae

    check_output_dir(args.out, "--out")
    model = load_openai_dvae(args.encoder, args.decoder)
    model.save_pretrained(args.out)
    c = model.config
    print(f"converted openai/DALL-E's dVAE ({c.vocab_size} codes, {c.downsample}x "
          f"downsampling) to {args.out} (config.json + model.safetensors)")  # fmt: skip
    return 0


def cmd_export_checkpoint(args: argparse.Namespace) -> int:
    from dalle.training.export import export_checkpoint

    out = export_checkpoint(args.run, args.out)
    print(f"model saved to {out} (config.json + model.safetensors)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Any training command: the stage is the command's (or, for one that trains several
    families, the preset's)."""
    from dalle.training.runner import run_training
    from dalle.training.stages import TRAIN_COMMANDS

    command = next(c for c in TRAIN_COMMANDS if c.name == args.train_command)
    flags = {"preset": args.preset, "data.source": args.data, "loop.steps": args.steps}
    for key in command.inputs:
        folder = getattr(args, key)
        flags[key] = folder and str(folder)
    stage, config = command.build_config(args.config, [*_flag_overrides(flags), *args.overrides])
    run_training(stage, config, Path(args.out), args.allow_changes)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Samples ``--num`` images per prompt and writes each prompt's images as soon as they
    are done, so an interrupt keeps every finished one."""
    import torch
    from tqdm import tqdm

    from dalle.sampling.generate import TextToImage
    from dalle.training.loop import resolve_device

    prompts = _read_prompts(args)
    _check_generate_outputs(args, len(prompts))
    device = resolve_device(args.device)
    pipe = TextToImage.from_pretrained(args.model, device, reranker=args.rerank)
    sampling = _sampling(args, pipe)
    prime = args.prime_image and read_image(args.prime_image, pipe.image_size, "--prime-image")
    keep = min(args.keep, args.num) if args.rerank else None
    choice = f", keeping the best {keep} by {args.rerank}" if args.rerank else ""
    print(f"generating {args.num} images for each of {len(prompts)} prompt(s) on {device}"
          f"{choice}", flush=True)  # fmt: skip
    # Image i of each prompt draws from its own generator seeded --seed + i, as in `dalle
    # serve`: the same prompt, seed and settings give the same images from either.
    generator = [torch.Generator().manual_seed(args.seed + i) for _ in prompts
                 for i in range(args.num)]  # fmt: skip
    output = _GenerateOutput(args, columns=keep or args.num if len(prompts) > 1 else 8)
    progress = tqdm(total=args.num * len(prompts), unit="image", leave=False)
    try:
        for prompt, images, scores, _ in pipe.iter_prompts(
            prompts, args.num, keep, sampling, generator, prime, args.prime_rows,
            args.batch_size, progress.update,
        ):  # fmt: skip
            if scores is not None:
                progress.write(f"{prompt!r}: kept {len(images)} of {args.num}, scores "
                               f"{scores[0]:.3f} (best) to {scores[-1]:.3f}")  # fmt: skip
            output.add(prompt, images)
    finally:
        progress.close()
        output.close()
    return 0


class _GenerateOutput:
    """Where `dalle generate` puts images: files as they come, a grid at the end."""

    def __init__(self, args: argparse.Namespace, columns: int) -> None:
        self.out_dir, self.grid_path, self.columns = args.out_dir, args.out, columns
        self.written, self.grid = 0, []

    def add(self, prompt: str, images) -> None:
        from dalle.sampling.generate import write_images

        if self.out_dir:
            write_images(images, [prompt] * len(images), self.out_dir, first_index=self.written)
        self.written += len(images)
        if self.grid_path:
            self.grid.append(images)

    def close(self) -> None:
        import torch

        from dalle.sampling.generate import save_grid

        if self.out_dir and self.written:
            print(f"wrote {self.written} images with their prompts to {self.out_dir}")
        if self.grid_path and self.grid:
            every = torch.cat(self.grid)
            save_grid(every, self.grid_path, columns=self.columns)
            print(f"wrote a grid of {len(every)} images to {self.grid_path}")


def _sampling(args: argparse.Namespace, pipe) -> SamplingConfig:
    """The model's recommended sampling settings with the flags given on top; says which."""
    sampling = pipe.sampling(args.guidance, args.temperature, args.top_k, args.top_p)
    shown = ", ".join(f"{k} {getattr(sampling, k):g}"
                      for k in ("temperature", "top_k", "top_p", "guidance_scale"))  # fmt: skip
    print(f"sampling: {shown} (flags not given take the model's recommended values)")
    return sampling


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts:
        try:
            text = args.prompts.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"--prompts {args.prompts}: not UTF-8 text") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give a prompt, or --prompts FILE with one prompt a line")
    return prompts


# A grid is one PNG held in memory: beyond this many images, write them to --out-dir.
MAX_GRID_IMAGES = 1024


def _check_generate_outputs(args: argparse.Namespace, prompts: int) -> None:
    """Everything about where results go and how they are chosen, before any sampling."""
    if not args.out and not args.out_dir:
        raise ValueError("say where the images go: --out GRID.png and/or --out-dir FOLDER")
    if args.prime_image and not args.prime_rows:
        raise ValueError("--prime-image needs --prime-rows N: the token rows of it to keep")
    if args.prime_rows and not args.prime_image:
        raise ValueError("--prime-rows needs --prime-image")
    if args.keep is not None and not args.rerank:
        raise ValueError("--keep needs --rerank (CLIP_DIR or self)")
    args.keep = args.keep or 8
    kept = min(args.keep, args.num) if args.rerank else args.num
    if args.out:
        check_output_file(args.out, "--out")
        if kept * prompts > MAX_GRID_IMAGES:
            raise ValueError(f"--out: a grid of {kept * prompts} images is too large "
                             f"(at most {MAX_GRID_IMAGES}); use --out-dir")  # fmt: skip
    if args.out_dir:
        check_output_dir(args.out_dir, "--out-dir")


def cmd_score(args: argparse.Namespace) -> int:
    """Prints how likely the model finds an image for a caption, or a whole data set, in
    bits per dimension."""
    from dalle.sampling.generate import TextToImage
    from dalle.training.loop import resolve_device

    if (args.data is None) == (args.image is None):
        raise ValueError("give an image and its caption, or --data SOURCE (one of the two)")
    if args.image is not None and args.caption is None:
        raise ValueError("the image's caption is missing: dalle score IMAGE CAPTION")
    pipe = TextToImage.from_pretrained(args.model, resolve_device(args.device))
    size = pipe.image_size
    result = _score_data(pipe, args, size) if args.data else _score_image(pipe, args, size)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['bits_per_dim']:.4f} bits per dimension "
          f"({result['bits_per_token']:.3f} bits per image token)")  # fmt: skip
    if args.data:
        print(f"  over {result['images']} images of the {args.subset} subset "
              f"({result['skipped']} skipped); without their captions "
              f"{result['bits_per_dim_without_caption']:.4f}; a uniform guess "
              f"{result['bits_per_dim_uniform']:.4f}")  # fmt: skip
    return 0


def _score_image(pipe, args: argparse.Namespace, size: int) -> dict:
    from dalle.sampling.generate import bits_per_dimension

    image = read_image(args.image, size, "image")[None]  # [1, 3, S, S]
    nats = pipe.log_likelihood(image, [args.caption])
    tokens = pipe.model.config.image_tokens
    return {
        "image": str(args.image), "caption": args.caption, "log_likelihood_nats": float(nats[0]),
        "bits_per_token": float(bits_per_dimension(nats, tokens)[0]),
        "bits_per_dim": float(bits_per_dimension(nats, 3 * size * size)[0]),
    }  # fmt: skip


def _score_data(pipe, args: argparse.Namespace, size: int) -> dict:
    from dalle.evaluation.likelihood import dataset_bits_per_dimension

    if args.data.startswith("shapes") and args.count is None:
        raise ValueError("--count is needed for 'shapes', an endless stream")
    data = DataConfig(source=args.data, image_size=size, subset=args.subset, count=args.count)
    return dataset_bits_per_dimension(pipe, data, args.count)


def cmd_clip_metrics(args: argparse.Namespace) -> int:
    """CLIP score of generated images against their prompts, and their Frechet distance
    to real images in the CLIP's feature space."""
    from dalle.data.datasets import load_images
    from dalle.evaluation.clip_metrics import clip_score, frechet_distance, image_features
    from dalle.sampling.rerank import CLIPScorer
    from dalle.training.loop import resolve_device

    scorer = CLIPScorer.from_pretrained(args.clip, resolve_device(args.device))
    size = scorer.model.config.image_size
    images, prompts = load_images(DataConfig(source=str(args.generated), image_size=size), 10**9)
    result = {"images": len(images), "clip_score": clip_score(scorer, images, prompts)}
    if args.real:
        real, _ = load_images(
            DataConfig(source=args.real, image_size=size, subset=args.real_subset), args.count
        )
        result["real_images"] = len(real)
        result["frechet_clip_distance"] = frechet_distance(
            image_features(scorer, images), image_features(scorer, real)
        )
    if args.json:
        print(json.dumps(result))
    else:
        print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in result.items()))  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from dalle.demo import DemoConfig, gpu_config, run_demo, scale_for_minutes, smoke_config

    if args.smoke:
        config = smoke_config()
    else:
        config = gpu_config() if args.profile == "gpu" else DemoConfig()
    config.seed = args.seed
    if args.training_minutes is not None:
        config.training_scale = scale_for_minutes(config, args.training_minutes)
    if args.pipeline == "unclip":
        from dalle.demo_unclip import cpu_unclip_config, gpu_unclip_config, run_unclip_demo

        reuse = args.reuse or (None if args.smoke else Path("outputs/demo"))
        if args.profile == "gpu" and not args.smoke:
            unclip = gpu_unclip_config(config, reuse, args.decoder or "transformer")
        else:
            unclip = cpu_unclip_config(config, reuse, args.decoder or "transformer")
        if args.smoke:
            unclip.candidates, unclip.prior_steps, unclip.decoder_steps = 2, 2, 2
        return run_unclip_demo(Path(args.out or "outputs/demo-unclip"), unclip)
    return run_demo(Path(args.out or "outputs/demo"), config)


# ----------------------------------------------------------------------------- parser


# The flag of each trained input folder a training command may read.
INPUT_FLAGS = {
    "image_tokenizer": (("--image-tokenizer", "--vae"), "a trained image tokenizer folder"),
    "tokenizer": (("--tokenizer",), "the caption tokenizer: a folder with tokenizer.json"),
    "clip": (("--clip",), "a trained CLIP folder (`dalle train-clip`), frozen"),
}  # fmt: skip
# Older names of training commands, still accepted.
TRAIN_ALIASES = {"train-image-tokenizer": ["train-vae"]}


def _add_train_commands(commands) -> None:
    """One subcommand per training command, with the flags every trainer shares and one
    for each trained folder its stages read."""
    from dalle.training.stages import TRAIN_COMMANDS

    for command in TRAIN_COMMANDS:
        default = command.stages[0].default_preset
        parser = commands.add_parser(command.name, help=f"train {command.help}",
                                     aliases=TRAIN_ALIASES.get(command.name, []))  # fmt: skip
        parser.add_argument("--data", help="image-caption source (see `dalle data check`)")
        parser.add_argument("--preset", help=f"model preset to start from (default {default})")
        parser.add_argument("--steps", type=positive_int, help="optimizer updates")
        parser.add_argument("--out", type=Path, required=True, help="run folder; re-run to resume")
        parser.add_argument(
            "--allow-changes", action="store_true",
            help="resume even though settings or inputs differ from the checkpoint's (each "
            "change is logged to config_changes.jsonl)",
        )  # fmt: skip
        for key in command.inputs:
            names, text = INPUT_FLAGS[key]
            parser.add_argument(*names, dest=key, type=Path, help=text)
        _add_config_args(parser)
        parser.set_defaults(func=cmd_train, train_command=command.name)


def _add_data_commands(commands) -> None:
    """Making, checking and judging data."""
    data = commands.add_parser("data", help="make and check data sets").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND"
    )
    shapes = data.add_parser("shapes", help="write Shapes World samples")
    shapes.add_argument("--out", type=Path, required=True)
    shapes.add_argument("--count", type=positive_int, default=1000)
    shapes.add_argument("--size", type=positive_int, default=64, help="canvas side in pixels")
    shapes.add_argument("--split", choices=["train", "zeroshot"], default="train")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--format", choices=["folder", "wds"], default="folder")
    shapes.add_argument(
        "--shard-size", type=positive_int, default=10_000, help="samples per tar (wds)"
    )
    shapes.add_argument("--workers", type=positive_int, default=1, help="rendering processes")
    shapes.set_defaults(func=cmd_data_shapes)

    check = data.add_parser("check", help="read a source through the loader; report skips")
    check.add_argument("source", help="'shapes[:split]', a folder, or tar shards")
    check.add_argument("--size", type=positive_int, default=64)
    check.add_argument(
        "--limit", type=positive_int, default=None, help="stop after this many samples"
    )
    check.add_argument("--workers", type=non_negative_int, default=0)
    check.add_argument(
        "--subset", choices=["all", "train", "holdout"], default="all",
        help="the samples training reads, or the held-out ones its metrics use",
    )  # fmt: skip
    check.add_argument("--holdout-fraction", type=probability, default=0.1,
                       help="share of keys in the holdout subset")  # fmt: skip
    check.add_argument(
        "--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
        help="skip images of more pixels than this without decoding them",
    )  # fmt: skip
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_data_check)

    judge = commands.add_parser("judge", help="judge X.png against X.txt (Shapes World)")
    judge.add_argument("directory", type=Path)
    judge.add_argument("--json", action="store_true", help="machine-readable report")
    judge.add_argument("--content-only", action="store_true",
                       help="judge count, colours and shapes only, not size, position or "
                            "relation (what a variation must keep)")  # fmt: skip
    judge.set_defaults(func=cmd_judge)


def _add_refine_arguments(parser: argparse.ArgumentParser) -> None:
    """How an image tokenizer's encoding searches past its encoder's guess."""
    parser.add_argument("--refine-steps", type=non_negative_int,
                        help="steps of encoding by search past the encoder's guess "
                             "(default: the tokenizer's own, usually 0)")  # fmt: skip
    parser.add_argument("--refine-precision", choices=PRECISIONS,
                        help="precision of the search's decoder passes (default: the "
                             "tokenizer's own, usually auto: bf16 on CUDA, else fp32)")  # fmt: skip


def _add_image_tokenizer_commands(commands) -> None:
    """An image tokenizer over a data set: reconstructions, and token shards."""
    recon = commands.add_parser(
        "reconstruct", help="an image tokenizer's reconstructions as NNNN.png + NNNN.txt"
    )
    recon.add_argument("--tokenizer", type=Path, required=True, help="an image tokenizer folder")
    recon.add_argument("--data", required=True, help="image-caption source")
    recon.add_argument("--subset", choices=["all", "train", "holdout"], default="all")
    recon.add_argument("--count", type=positive_int, default=1000)
    recon.add_argument("--size", type=positive_int, default=64, help="image side in pixels")
    recon.add_argument("--out-dir", type=Path, required=True)
    recon.add_argument("--device", default="auto")
    _add_refine_arguments(recon)
    recon.add_argument("--json", action="store_true")
    recon.set_defaults(func=cmd_reconstruct)

    tokenize = commands.add_parser(
        "tokenize-data", help="encode a data set once into shards of image tokens + captions"
    )
    tokenize.add_argument("--tokenizer", type=Path, required=True, help="an image tokenizer folder")
    tokenize.add_argument("--data", required=True, help="image-caption source")
    tokenize.add_argument("--out", type=Path, required=True, help="folder for the shards")
    tokenize.add_argument("--subset", choices=["all", "train", "holdout"], default="all")
    tokenize.add_argument("--count", type=positive_int, help="samples (needed for 'shapes')")
    tokenize.add_argument("--size", type=positive_int, default=64, help="image side in pixels")
    tokenize.add_argument("--shard-size", type=positive_int, default=10_000)
    tokenize.add_argument("--workers", type=non_negative_int, default=0)
    tokenize.add_argument("--device", default="auto")
    _add_refine_arguments(tokenize)
    tokenize.add_argument("--json", action="store_true")
    tokenize.set_defaults(func=cmd_tokenize_data)


def _add_caption_tokenizer_commands(commands) -> None:
    """The caption BPE."""
    tokenizer = commands.add_parser(
        "tokenizer", help="train and use the caption BPE"
    ).add_subparsers(dest="tokenizer_command", required=True, metavar="TOKENIZER_COMMAND")
    train = tokenizer.add_parser("train", help="train a BPE tokenizer on a source's captions")
    train.add_argument("--data", help="caption source (see `dalle data check`)")
    train.add_argument("--vocab-size", type=positive_int)
    train.add_argument("--max-length", type=positive_int)
    train.add_argument("--max-captions", type=positive_int)
    train.add_argument("--out", type=Path, required=True)
    _add_config_args(train)
    train.set_defaults(func=cmd_tokenizer_train)
    encode = tokenizer.add_parser("encode", help="show the tokens of some captions")
    encode.add_argument("--tokenizer", type=Path, required=True)
    encode.add_argument("text", nargs="+")
    encode.set_defaults(func=cmd_tokenizer_encode)


def _add_model_commands(commands) -> None:
    """Model folders: sizes, conversion, export from a checkpoint."""
    info = commands.add_parser(
        "model-info", help="parameter counts of a preset (nothing allocated)"
    )
    info.add_argument("--preset", required=True)
    info.add_argument(
        "--gpus", type=positive_int, help="also memory per GPU when sharded over N GPUs"
    )
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_model_info)

    convert = commands.add_parser(
        "convert-openai-dvae",
        help="OpenAI's released dVAE (encoder.pkl, decoder.pkl) as an image tokenizer folder",
    )
    convert.add_argument("--encoder", type=Path, required=True, help="openai/DALL-E encoder.pkl")
    convert.add_argument("--decoder", type=Path, required=True, help="openai/DALL-E decoder.pkl")
    convert.add_argument("--out", type=Path, required=True, help="the model folder to write")
    convert.set_defaults(func=cmd_convert_openai_dvae)

    export = commands.add_parser(
        "export-checkpoint",
        help="a run's last training checkpoint (sharded or not) as a model folder",
    )
    export.add_argument("run", type=Path, help="a training run folder")
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(func=cmd_export_checkpoint)


def _add_inference_commands(commands) -> None:
    """Using trained models: generation, scoring, metrics."""
    generate = commands.add_parser("generate", help="images from a caption")
    add_prompt_arguments(generate)
    generate.add_argument("--model", type=Path, required=True, help="a `dalle train` run folder")
    recommended = "default: the model's recommended value (its generation_config.json)"
    generate.add_argument("--temperature", type=positive_float, help=recommended)
    generate.add_argument("--top-k", type=non_negative_int, help=f"0 keeps all; {recommended}")
    generate.add_argument("--top-p", type=probability, help=recommended)
    generate.add_argument(
        "--guidance", type=finite_float, help=f"classifier-free guidance scale; {recommended}"
    )
    generate.add_argument("--seed", type=non_negative_int, default=0,
                          help="image i of each prompt is drawn with seed + i")  # fmt: skip
    generate.add_argument(
        "--rerank",
        help="a `dalle train-clip` folder, or 'self' (the transformer's own likelihood of the "
        "caption given the image): keep only the best --keep of --num samples per prompt",
    )
    generate.add_argument(
        "--keep", type=positive_int, help="samples kept per prompt by --rerank (default 8)"
    )
    generate.add_argument("--prime-image", type=Path, help="complete this image ...")
    generate.add_argument(
        "--prime-rows", type=positive_int, default=0, help="... keeping its top token rows"
    )
    generate.add_argument("--device", default="auto")
    generate.set_defaults(func=cmd_generate)

    score = commands.add_parser(
        "score", help="bits per dimension of an image given its caption, or of a data set"
    )
    score.add_argument("image", type=Path, nargs="?", help="an image (or use --data)")
    score.add_argument("caption", nargs="?", help="its caption")
    score.add_argument("--data", help="score every image of this source with its caption")
    score.add_argument("--subset", choices=["all", "train", "holdout"], default="holdout",
                       help="with --data: which part (default: the held-out tenth)")  # fmt: skip
    score.add_argument("--count", type=positive_int, help="with --data: at most this many")
    score.add_argument("--model", type=Path, required=True, help="a `dalle train` run folder")
    score.add_argument("--device", default="auto")
    score.add_argument("--json", action="store_true")
    score.set_defaults(func=cmd_score)

    metrics = commands.add_parser(
        "clip-metrics", help="CLIP score and Frechet CLIP distance of generated images"
    )
    metrics.add_argument("generated", type=Path, help="folder of NNNN.png + NNNN.txt (prompts)")
    metrics.add_argument("--clip", type=Path, required=True, help="a `dalle train-clip` folder")
    metrics.add_argument("--real", help="real images to compare with (any --data source)")
    metrics.add_argument("--real-subset", default="holdout", choices=["all", "train", "holdout"])
    metrics.add_argument("--count", type=positive_int, default=1000, help="real images to read")
    metrics.add_argument("--device", default="auto")
    metrics.add_argument("--json", action="store_true")
    metrics.set_defaults(func=cmd_clip_metrics)


def cmd_serve(args: argparse.Namespace) -> int:
    """An HTTP API and a page over one worker that owns the model, until Ctrl-C."""
    from dalle.serving.jobs import Limits
    from dalle.serving.server import ServeConfig, serve
    from dalle.training.loop import resolve_device

    limits = Limits(max_images=args.max_images, max_queue=args.max_queue,
                    max_job_seconds=args.max_job_seconds, batch_size=args.batch_size,
                    batching=not args.no_batching, history_count=args.history)  # fmt: skip
    check_output_dir(args.out_dir, "--out-dir")
    serve(ServeConfig(
        model=args.model, clip=args.clip, prior=args.prior, decoder=args.decoder,
        upsampler=args.upsampler,
        host=args.host, port=args.port, token=args.token,
        insecure=args.insecure, allowed_hosts=args.allowed_host, cors_origins=args.cors_origin,
        out_dir=args.out_dir, limits=limits, device=resolve_device(args.device),
    ))  # fmt: skip
    return 0


def _add_serve_command(commands) -> None:
    serve = commands.add_parser("serve", help="an HTTP API and a web page to generate images")
    serve.add_argument("--model", type=Path, help="a `dalle train` model folder (DALL-E)")
    serve.add_argument("--clip", type=Path, help="a `dalle train-clip` folder: scores, re-ranking")
    serve.add_argument("--prior", type=Path, help="a `dalle train-prior` folder (DALL-E 2) ...")
    serve.add_argument("--decoder", type=Path, help="... and a `dalle train-decoder` folder")
    serve.add_argument("--upsampler", type=Path,
                       help="a `dalle train-upsampler` folder: DALL-E 2 drawn larger")  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="default: this machine only")
    serve.add_argument("--port", type=positive_int, default=8000)
    serve.add_argument("--token", help="bearer token the API requires (or DALLE_SERVE_TOKEN); "
                       "needed to serve beyond this machine")  # fmt: skip
    serve.add_argument("--insecure", action="store_true",
                       help="serve beyond this machine without a token")  # fmt: skip
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host name clients may use (repeatable)")  # fmt: skip
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="an origin other pages may call the API from (repeatable)")  # fmt: skip
    serve.add_argument("--out-dir", type=Path, default=Path("outputs/serve"),
                       help="every image, with its prompt and settings, lands here")  # fmt: skip
    serve.add_argument("--max-images", type=positive_int, default=16, help="per job")
    serve.add_argument("--max-queue", type=positive_int, default=32, help="jobs waiting")
    serve.add_argument("--max-job-seconds", type=positive_float, default=600.0)
    serve.add_argument("--batch-size", type=positive_int, default=16, help="images per batch")
    serve.add_argument("--no-batching", action="store_true",
                       help="never put two jobs in one sampling batch")  # fmt: skip
    serve.add_argument("--history", type=positive_int, default=200,
                       help="finished jobs remembered (their files stay)")  # fmt: skip
    serve.add_argument("--device", default="auto")
    serve.set_defaults(func=cmd_serve)


def _add_demo_command(commands) -> None:
    """The main job on built-in data."""
    demo = commands.add_parser("demo", help="the main job on built-in data")
    demo.add_argument("--pipeline", choices=["dalle", "unclip"], default="dalle",
                      help="DALL-E (default) or DALL-E 2 (unCLIP: prior and decoder, "
                      "reusing the DALL-E demo's caption BPE, image tokenizer and CLIP when "
                      "--reuse has them)")  # fmt: skip
    demo.add_argument("--reuse", type=Path, metavar="DIR",
                      help="unclip only: the DALL-E demo folder whose finished caption BPE, "
                      "image tokenizer and CLIP to copy (default: outputs/demo; none for "
                      "--smoke)")  # fmt: skip
    demo.add_argument(
        "--out", type=Path, help="default: outputs/demo (outputs/demo-unclip for unclip)"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--decoder", choices=["transformer", "latent", "tokens", "pixel"],
                      help="unclip only: the decoder draws the image tokenizer's tokens one "
                      "after another with a transformer (the default), its codes by "
                      "Gaussian diffusion (also sized by --profile gpu), its tokens by "
                      "masked-token diffusion, or pixels, as the paper's")  # fmt: skip
    demo.add_argument("--profile", choices=["cpu", "gpu"], default="cpu",
                      help="stage sizes: cpu (the default, about 17 minutes of training on 2 "
                      "cores) or gpu (larger models and batches for one GPU, "
                      "configs/*-shapes-gpu.yaml)")  # fmt: skip
    demo.add_argument(
        "--smoke", action="store_true", help="a few updates per stage: checks the pipeline only"
    )
    demo.add_argument("--training-minutes", type=float, metavar="M",
                      help="scale every stage's time budget and planned updates so that "
                      "training takes M minutes in all (default: the tuned budget, about "
                      "17); for a fresh --out")  # fmt: skip
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dalle", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show tracebacks, anywhere on the line (or {DEBUG_ENV}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_data_commands(commands)
    _add_image_tokenizer_commands(commands)
    _add_caption_tokenizer_commands(commands)
    _add_model_commands(commands)
    _add_train_commands(commands)
    _add_inference_commands(commands)
    add_unclip_commands(commands)
    _add_serve_command(commands)
    _add_demo_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # SIGTERM (a scheduler's kill, `timeout`) stops like Ctrl-C, exiting 143.
    try:
        with InterruptGuard():
            return args.func(args)
    except BrokenPipeError:
        # The reader went away (`dalle judge DIR | head -1`): stop quietly, as Unix tools do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
        return 0
    except (Exception, KeyboardInterrupt) as err:
        return report(args.command, err, debug)


if __name__ == "__main__":
    sys.exit(main())
