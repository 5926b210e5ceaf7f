"""The ``dalle`` command line: each subcommand is a thin call into the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dalle.cli_support import (
    DEBUG_ENV,
    OneLineParser,
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
from dalle.config import load_config, save_config
from dalle.data.datasets import DataConfig
from dalle.data.images import DEFAULT_MAX_PIXELS
from dalle.interrupts import InterruptGuard
from dalle.tokenizers.text import TokenizerConfig

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

    report = judge_directory(args.directory)
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
    tokenizer = load_image_tokenizer(args.tokenizer, resolve_device(args.device))
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
    tokenizer = load_image_tokenizer(args.tokenizer, resolve_device(args.device))
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


@dataclass
class TokenizerTrainConfig:
    """Settings of `dalle tokenizer train`: by default the train subset's captions only."""

    data: DataConfig = field(default_factory=lambda: DataConfig(subset="train"))
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from dalle.data.datasets import SkipLog, iter_captions
    from dalle.tokenizers.text import TextTokenizer, length_statistics

    overrides = _flag_overrides({
        "data.source": args.data,
        "tokenizer.vocab_size": args.vocab_size,
        "tokenizer.max_length": args.max_length,
        "tokenizer.max_captions": args.max_captions,
    })  # fmt: skip
    config = load_config(TokenizerTrainConfig, args.config, [*overrides, *args.overrides])
    check_output_dir(args.out, "--out")
    start = time.perf_counter()
    skips = SkipLog()
    captions = list(iter_captions(config.data, config.tokenizer.max_captions, skips))
    if skips.total:
        print(skips.summary())
    if not captions:
        raise ValueError(f"no usable captions in {config.data.source}")
    tokenizer = TextTokenizer.train(captions, config.tokenizer)
    tokenizer.save(args.out)
    save_config(config, Path(args.out) / "train_config.yaml")
    info = tokenizer.describe()
    stats = length_statistics(tokenizer, captions)
    print(f"trained BPE on {len(captions)} captions in {time.perf_counter() - start:.1f}s: "
          f"vocabulary {info['vocab_size']} ({info['merges']} merges), "
          f"mean {stats.mean:.1f} and longest {stats.longest} tokens per caption; "
          f"{stats.truncated} of {len(captions)} captions would be cut to "
          f"{tokenizer.max_length} tokens")  # fmt: skip
    print(f"saved to {Path(args.out) / 'tokenizer.json'}")
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
    from dalle.models.registry import build_preset, parameter_counts, sharded_memory

    model = build_preset(args.preset)
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


def cmd_export_checkpoint(args: argparse.Namespace) -> int:
    from dalle.training.export import export_checkpoint

    out = export_checkpoint(args.run, args.out)
    print(f"model saved to {out} (config.json + model.safetensors)")
    return 0


def cmd_train_image_tokenizer(args: argparse.Namespace) -> int:
    """The paper's dVAE (``dvae-*`` presets) or the FSQ tokenizer (``fsq-*``)."""
    from dalle.training.image_tokenizer_task import image_tokenizer_training
    from dalle.training.runner import run_training

    flags = {"preset": args.preset, "data.source": args.data, "loop.steps": args.steps}
    overrides = [*_flag_overrides(flags), *args.overrides]
    config, task = image_tokenizer_training(args.config, overrides)
    run_training(config, task, Path(args.out), args.allow_changes)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dalle.training.dalle_task import DALLETask, load_dalle_train_config
    from dalle.training.runner import run_training

    flags = {
        "preset": args.preset, "data.source": args.data, "loop.steps": args.steps,
        "image_tokenizer": args.image_tokenizer and str(args.image_tokenizer),
        "tokenizer": args.tokenizer and str(args.tokenizer),
    }  # fmt: skip
    config = load_dalle_train_config(args.config, [*_flag_overrides(flags), *args.overrides])
    run_training(config, DALLETask, Path(args.out), args.allow_changes)
    return 0


def cmd_train_clip(args: argparse.Namespace) -> int:
    from dalle.training.clip_task import CLIPTask, load_clip_train_config
    from dalle.training.runner import run_training

    flags = {
        "preset": args.preset, "data.source": args.data, "loop.steps": args.steps,
        "tokenizer": args.tokenizer and str(args.tokenizer),
    }  # fmt: skip
    config = load_clip_train_config(args.config, [*_flag_overrides(flags), *args.overrides])
    run_training(config, CLIPTask, Path(args.out), args.allow_changes)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Samples ``--num`` images per prompt and writes each prompt's images as soon as they
    are done, so an interrupt keeps every finished one."""
    import torch
    from tqdm import tqdm

    from dalle.sampling.generate import TextToImage, save_grid, write_images
    from dalle.sampling.rerank import sample_and_keep
    from dalle.training.loop import resolve_device

    prompts = _read_prompts(args)
    _check_generate_outputs(args, len(prompts))
    device = resolve_device(args.device)
    pipe = TextToImage.from_pretrained(args.model, device)
    sampling = _sampling(args, pipe.defaults)
    size = pipe.model.config.image_grid * pipe.image_tokenizer.downsample
    prime = read_image(args.prime_image, size, "--prime-image") if args.prime_image else None
    scorer = _reranker(args, pipe, device)
    kept = min(args.keep, args.num) if args.rerank else args.num
    choice = f", keeping the best {kept} by {args.rerank}" if args.rerank else ""
    print(f"generating {args.num} images for each of {len(prompts)} prompt(s) on {device}"
          f"{choice}", flush=True)  # fmt: skip
    generator = torch.Generator(device=device).manual_seed(args.seed)
    grid: list[torch.Tensor] = []
    written = 0
    progress = tqdm(total=args.num * len(prompts), unit="image", leave=False)
    try:
        for prompt in prompts:
            images, scores = sample_and_keep(
                pipe, prompt, args.num, scorer, args.keep, args.batch_size, progress.update,
                sampling=sampling, generator=generator, prime_image=prime,
                prime_rows=args.prime_rows,
            )  # fmt: skip
            if scores is not None:
                progress.write(f"{prompt!r}: kept {len(images)} of {args.num}, scores "
                               f"{scores[0]:.3f} (best) to {scores[-1]:.3f}")  # fmt: skip
            if args.out_dir:
                write_images(images, [prompt] * len(images), args.out_dir, first_index=written)
            written += len(images)
            if args.out:
                grid.append(images)
    finally:
        progress.close()
        if args.out_dir and written:
            print(f"wrote {written} images with their prompts to {args.out_dir}")
        if args.out and grid:
            every = torch.cat(grid)
            save_grid(every, args.out, columns=kept if len(prompts) > 1 else 8)
            print(f"wrote a grid of {len(every)} images to {args.out}")
    return 0


def _sampling(args: argparse.Namespace, defaults: SamplingConfig) -> SamplingConfig:
    """The model's recommended sampling settings with the flags given on top; says which."""
    given = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
             "guidance_scale": args.guidance}  # fmt: skip
    sampling = dataclasses.replace(defaults, **{k: v for k, v in given.items() if v is not None})
    shown = ", ".join(f"{k} {getattr(sampling, k):g}" for k in given)
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


def _reranker(args: argparse.Namespace, pipe, device) -> Callable | None:
    """The scorer that --rerank names: a CLIP folder, 'self', or None."""
    if not args.rerank:
        return None
    if args.rerank == "self":
        from dalle.sampling.rerank import self_scores

        return lambda images, prompts: self_scores(pipe, images, prompts)
    from dalle.sampling.rerank import CLIPScorer

    return CLIPScorer.from_pretrained(args.rerank, device)


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
    size = pipe.model.config.image_grid * pipe.image_tokenizer.downsample
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
    from dalle.demo import DemoConfig, run_demo, scale_for_minutes, smoke_config

    config = smoke_config() if args.smoke else DemoConfig()
    config.seed = args.seed
    if args.training_minutes is not None:
        config.training_scale = scale_for_minutes(config, args.training_minutes)
    return run_demo(Path(args.out), config)


# ----------------------------------------------------------------------------- parser


def _add_train_command(
    commands, name: str, what: str, default_preset: str
) -> argparse.ArgumentParser:
    """A training subcommand with the flags every trainer shares."""
    parser = commands.add_parser(name, help=f"train {what}")
    parser.add_argument("--data", help="image-caption source (see `dalle data check`)")
    parser.add_argument("--preset", help=f"model preset to start from (default {default_preset})")
    parser.add_argument("--steps", type=positive_int, help="optimizer updates")
    parser.add_argument("--out", type=Path, required=True, help="run folder; re-run to resume")
    parser.add_argument(
        "--allow-changes", action="store_true",
        help="resume even though settings or inputs differ from the checkpoint's (each change "
        "is logged to config_changes.jsonl)",
    )  # fmt: skip
    _add_config_args(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dalle", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show tracebacks, anywhere on the line (or {DEBUG_ENV}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    judge.set_defaults(func=cmd_judge)

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
    tokenize.add_argument("--json", action="store_true")
    tokenize.set_defaults(func=cmd_tokenize_data)

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

    info = commands.add_parser(
        "model-info", help="parameter counts of a preset (nothing allocated)"
    )
    info.add_argument("--preset", required=True)
    info.add_argument(
        "--gpus", type=positive_int, help="also memory per GPU when sharded over N GPUs"
    )
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_model_info)

    for name in ("train-image-tokenizer", "train-vae"):  # train-vae: the older name
        tokenizer_train = _add_train_command(
            commands, name, "an image tokenizer: the paper's dVAE (dvae-* presets) or FSQ "
            "(fsq-* presets)", "dvae-small",
        )  # fmt: skip
        tokenizer_train.set_defaults(func=cmd_train_image_tokenizer)

    dalle_train = _add_train_command(commands, "train", "the DALL-E transformer", "dalle-bench")
    dalle_train.add_argument(
        "--image-tokenizer", "--vae", type=Path, help="a trained image tokenizer folder (dVAE, FSQ)"
    )
    dalle_train.add_argument(
        "--tokenizer", type=Path, help="the caption tokenizer: a folder with tokenizer.json"
    )
    dalle_train.set_defaults(func=cmd_train)

    clip_train = _add_train_command(commands, "train-clip", "the CLIP model", "clip-small")
    clip_train.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json")
    clip_train.set_defaults(func=cmd_train_clip)

    export = commands.add_parser(
        "export-checkpoint",
        help="a run's last training checkpoint (sharded or not) as a model folder",
    )
    export.add_argument("run", type=Path, help="a training run folder")
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(func=cmd_export_checkpoint)

    generate = commands.add_parser("generate", help="images from a caption")
    generate.add_argument("prompt", nargs="*", help="caption(s)")
    generate.add_argument("--prompts", type=Path, help="a file of prompts, one a line")
    generate.add_argument("--model", type=Path, required=True, help="a `dalle train` run folder")
    generate.add_argument("--num", type=positive_int, default=8, help="images per prompt")
    generate.add_argument("--out", type=Path, help="grid PNG")
    generate.add_argument("--out-dir", type=Path, help="every image as NNNN.png + NNNN.txt")
    recommended = "default: the model's recommended value (its generation_config.json)"
    generate.add_argument("--temperature", type=positive_float, help=recommended)
    generate.add_argument("--top-k", type=non_negative_int, help=f"0 keeps all; {recommended}")
    generate.add_argument("--top-p", type=probability, help=recommended)
    generate.add_argument(
        "--guidance", type=finite_float, help=f"classifier-free guidance scale; {recommended}"
    )
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--batch-size", type=positive_int, default=16)
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

    demo = commands.add_parser("demo", help="the main job on built-in data")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--smoke", action="store_true", help="a few updates per stage: checks the pipeline only"
    )
    demo.add_argument(
        "--training-minutes", type=float, metavar="M",
        help="scale every stage's time budget and planned updates so that training takes M "
        "minutes in all (default: the tuned budget, about 17); for a fresh --out",
    )  # fmt: skip
    demo.set_defaults(func=cmd_demo)
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
