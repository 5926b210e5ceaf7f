"""The ``dalle`` command line: each subcommand is a thin call into the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dalle.config import ConfigError, load_config, save_config
from dalle.data.datasets import DataConfig
from dalle.tokenizers.text import TokenizerConfig

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
                        num_workers=args.workers, count=args.limit)  # fmt: skip
    dataset = open_source(config)
    skips = new_skip_log(dataset)
    samples = 0
    for batch in tqdm(
        make_loader(dataset, config), desc="reading", unit="batch", disable=args.json
    ):
        samples += len(batch.captions)
        skips.add(batch.skipped)
        if args.limit is not None and samples >= args.limit:
            break
    if args.json:
        print(json.dumps({"samples": samples, "skipped": skips.to_json()}, indent=2))
    else:
        print(f"read {samples} samples from {args.source} at {args.size}x{args.size}")
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


# ----------------------------------------------------------------------------- tokenizer


@dataclass
class TokenizerTrainConfig:
    """Settings of `dalle tokenizer train`."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from dalle.data.datasets import iter_captions
    from dalle.tokenizers.text import TextTokenizer

    overrides = _flag_overrides({
        "data.source": args.data,
        "tokenizer.vocab_size": args.vocab_size,
        "tokenizer.max_length": args.max_length,
        "tokenizer.max_captions": args.max_captions,
    })  # fmt: skip
    config = load_config(TokenizerTrainConfig, args.config, [*overrides, *args.overrides])
    limit = config.tokenizer.max_captions
    start = time.perf_counter()
    captions = list(iter_captions(config.data, limit))
    if not captions:
        raise ValueError(f"no captions found in {config.data.source}")
    tokenizer = TextTokenizer.train(captions, config.tokenizer)
    tokenizer.save(args.out)
    save_config(config, Path(args.out) / "train_config.yaml")
    encoded = tokenizer.encode(captions)
    info = tokenizer.describe()
    mean_len = encoded.lengths.float().mean().item()
    print(f"trained BPE on {len(captions)} captions in {time.perf_counter() - start:.1f}s: "
          f"vocabulary {info['vocab_size']} ({info['merges']} merges), "
          f"mean {mean_len:.1f} tokens per caption; {tokenizer.truncation_summary()}")  # fmt: skip
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


def cmd_train_vae(args: argparse.Namespace) -> int:
    from dalle.training.dvae_task import DVAETask, load_dvae_train_config
    from dalle.training.runner import run_training

    flags = {"preset": args.preset, "data.source": args.data, "loop.steps": args.steps}
    config = load_dvae_train_config(args.config, [*_flag_overrides(flags), *args.overrides])
    run_training(config, DVAETask, Path(args.out))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dalle.training.dalle_task import DALLETask, load_dalle_train_config
    from dalle.training.runner import run_training

    flags = {
        "preset": args.preset, "data.source": args.data, "loop.steps": args.steps,
        "vae": args.vae and str(args.vae), "tokenizer": args.tokenizer and str(args.tokenizer),
    }  # fmt: skip
    config = load_dalle_train_config(args.config, [*_flag_overrides(flags), *args.overrides])
    run_training(config, DALLETask, Path(args.out))
    return 0


def cmd_train_clip(args: argparse.Namespace) -> int:
    from dalle.training.clip_task import CLIPTask, load_clip_train_config
    from dalle.training.runner import run_training

    flags = {
        "preset": args.preset, "data.source": args.data, "loop.steps": args.steps,
        "tokenizer": args.tokenizer and str(args.tokenizer),
    }  # fmt: skip
    config = load_clip_train_config(args.config, [*_flag_overrides(flags), *args.overrides])
    run_training(config, CLIPTask, Path(args.out))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from dalle.sampling.generate import TextToImage, save_grid, write_images
    from dalle.sampling.sampler import SamplingConfig
    from dalle.training.loop import resolve_device

    prompts = list(args.prompt)
    if args.prompts:
        prompts += [
            line.strip()
            for line in args.prompts.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    if not prompts:
        raise ValueError("give a prompt, or --prompts FILE with one prompt a line")
    device = resolve_device(args.device)
    pipe = TextToImage.from_pretrained(args.model, device)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.guidance)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    every, captions = [], []
    prime = None
    if args.prime_image:
        from dalle.data.images import load_image

        size = pipe.model.config.image_grid * pipe.vae.config.downsample
        prime = load_image(args.prime_image, size)
    scorer = None
    if args.rerank and args.rerank != "self":
        from dalle.sampling.rerank import CLIPScorer

        scorer = CLIPScorer.from_pretrained(args.rerank, device)
    for prompt in prompts:
        images = pipe(
            prompt, args.num, sampling, generator, args.batch_size, prime, args.prime_rows
        )
        if args.rerank:
            from dalle.sampling.rerank import keep_best, self_scores

            scores = (
                scorer(images, [prompt] * len(images))
                if scorer
                else self_scores(pipe, images, [prompt] * len(images))
            )
            images, kept = keep_best(images, scores, args.keep)
            print(f"{prompt!r}: kept {len(images)} of {args.num}, scores "
                  f"{kept[0]:.3f} (best) to {kept[-1]:.3f}")  # fmt: skip
        every.append(images)
        captions += [prompt] * len(images)
    images = torch.cat(every)
    if args.out:
        per_prompt = min(args.keep, args.num) if args.rerank else args.num
        save_grid(images, args.out, columns=per_prompt if len(prompts) > 1 else 8)
        print(f"wrote a grid of {len(images)} images to {args.out}")
    if args.out_dir:
        write_images(images, captions, args.out_dir)
        print(f"wrote {len(images)} images with their prompts to {args.out_dir}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Prints how likely the model finds an image for a caption, in bits per dimension."""
    from dalle.data.images import load_image
    from dalle.sampling.generate import TextToImage, bits_per_dimension
    from dalle.training.loop import resolve_device

    pipe = TextToImage.from_pretrained(args.model, resolve_device(args.device))
    size = pipe.model.config.image_grid * pipe.vae.config.downsample
    image = load_image(args.image, size)[None]  # [1, 3, S, S]
    nats = pipe.log_likelihood(image, [args.caption])
    tokens = pipe.model.config.image_tokens
    result = {
        "image": str(args.image), "caption": args.caption, "log_likelihood_nats": float(nats[0]),
        "bits_per_token": float(bits_per_dimension(nats, tokens)[0]),
        "bits_per_dim": float(bits_per_dimension(nats, 3 * size * size)[0]),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        per_dim, per_token = result["bits_per_dim"], result["bits_per_token"]
        nats = result["log_likelihood_nats"]
        print(
            f"{per_dim:.4f} bits per dimension ({per_token:.3f} bits per image token; "
            f"log p(tokens | caption) = {nats:.1f} nats)"
        )
    return 0


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
    from dalle.demo import DemoConfig, run_demo, smoke_config

    config = smoke_config() if args.smoke else DemoConfig()
    config.seed = args.seed
    return run_demo(Path(args.out), config)


# ----------------------------------------------------------------------------- parser


def _add_train_command(
    commands, name: str, what: str, default_preset: str
) -> argparse.ArgumentParser:
    """A training subcommand with the flags every trainer shares."""
    parser = commands.add_parser(name, help=f"train {what}")
    parser.add_argument("--data", help="image-caption source (see `dalle data check`)")
    parser.add_argument("--preset", help=f"model preset to start from (default {default_preset})")
    parser.add_argument("--steps", type=int, help="optimizer updates")
    parser.add_argument("--out", type=Path, required=True, help="run folder; re-run to resume")
    _add_config_args(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dalle", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="make and check data sets").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND"
    )
    shapes = data.add_parser("shapes", help="write Shapes World samples")
    shapes.add_argument("--out", type=Path, required=True)
    shapes.add_argument("--count", type=int, default=1000)
    shapes.add_argument("--size", type=int, default=64, help="canvas side in pixels")
    shapes.add_argument("--split", choices=["train", "zeroshot"], default="train")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--format", choices=["folder", "wds"], default="folder")
    shapes.add_argument("--shard-size", type=int, default=10_000, help="samples per tar (wds)")
    shapes.add_argument("--workers", type=int, default=1, help="rendering processes")
    shapes.set_defaults(func=cmd_data_shapes)

    check = data.add_parser("check", help="read a source through the loader; report skips")
    check.add_argument("source", help="'shapes[:split]', a folder, or tar shards")
    check.add_argument("--size", type=int, default=64)
    check.add_argument("--limit", type=int, default=None, help="stop after this many samples")
    check.add_argument("--workers", type=int, default=0)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_data_check)

    judge = commands.add_parser("judge", help="judge X.png against X.txt (Shapes World)")
    judge.add_argument("directory", type=Path)
    judge.add_argument("--json", action="store_true", help="machine-readable report")
    judge.set_defaults(func=cmd_judge)

    tokenizer = commands.add_parser(
        "tokenizer", help="train and use the caption BPE"
    ).add_subparsers(dest="tokenizer_command", required=True, metavar="TOKENIZER_COMMAND")
    train = tokenizer.add_parser("train", help="train a BPE tokenizer on a source's captions")
    train.add_argument("--data", help="caption source (see `dalle data check`)")
    train.add_argument("--vocab-size", type=int)
    train.add_argument("--max-length", type=int)
    train.add_argument("--max-captions", type=int)
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
    info.add_argument("--gpus", type=int, help="also memory per GPU when sharded over N GPUs")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_model_info)

    vae = _add_train_command(
        commands, "train-vae", "the discrete VAE image tokenizer", "dvae-small"
    )
    vae.set_defaults(func=cmd_train_vae)

    dalle_train = _add_train_command(commands, "train", "the DALL-E transformer", "dalle-bench")
    dalle_train.add_argument("--vae", type=Path, help="trained dVAE folder")
    dalle_train.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json")
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
    generate.add_argument("--num", type=int, default=8, help="images per prompt")
    generate.add_argument("--out", type=Path, help="grid PNG")
    generate.add_argument("--out-dir", type=Path, help="every image as NNNN.png + NNNN.txt")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale"
    )
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--batch-size", type=int, default=16)
    generate.add_argument(
        "--rerank",
        help="a `dalle train-clip` folder, or 'self' (the transformer's own likelihood of the "
        "caption given the image): keep only the best --keep of --num samples per prompt",
    )
    generate.add_argument("--keep", type=int, default=8, help="samples kept per prompt by --rerank")
    generate.add_argument("--prime-image", type=Path, help="complete this image ...")
    generate.add_argument(
        "--prime-rows", type=int, default=0, help="... keeping its top token rows"
    )
    generate.add_argument("--device", default="auto")
    generate.set_defaults(func=cmd_generate)

    score = commands.add_parser("score", help="log-likelihood of an image given a caption")
    score.add_argument("image", type=Path)
    score.add_argument("caption")
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
    metrics.add_argument("--count", type=int, default=1000, help="real images to read")
    metrics.add_argument("--device", default="auto")
    metrics.add_argument("--json", action="store_true")
    metrics.set_defaults(func=cmd_clip_metrics)

    demo = commands.add_parser("demo", help="the main job on built-in data")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--smoke", action="store_true", help="a few updates per stage: checks the pipeline only"
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"dalle {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
