"""`make demo`: the whole text-to-image pipeline on Shapes World, on a CPU.

Stages, each reused when a previous run finished it (and resumed from its checkpoint
when a previous run was interrupted inside it):

1. a caption BPE trained on training-split captions;
2. the image tokenizer (FSQ), trained on training-split images;
3. training scenes encoded once into token shards (``image_tokens/``);
4. the transformer over ``[caption tokens ; image tokens]``, read from those shards;
5. a CLIP on the same captions and images;
6. for seen-combination prompts and for zero-shot prompts, several samples per prompt
   of which the CLIP keeps the best, written as ``NNNN.png`` + ``NNNN.txt`` under
   ``seen/`` and ``zeroshot/``, with a grid of each and the judge's verdict (and
   the verdict on the first sample of each prompt, without re-ranking) in
   ``results.json``.

The prompts are captions of Shapes World samples the models never trained on (the
holdout subset): seen prompts come from the training split (their colour-shape pairs were
trained on, in other scenes), zero-shot prompts from the zero-shot split (pairs never
seen in training).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from dalle.data.datasets import DataConfig
from dalle.data.token_shards import META_FILE, shards_pattern, write_token_shards
from dalle.evaluation.shapes_judge import judge_directory
from dalle.evaluation.text_to_image import (
    choose_sampling,
    generate_and_judge,
    sampling_candidates,
    shapes_prompts,
)
from dalle.files import folder_hash
from dalle.interrupts import InterruptGuard
from dalle.models.image_tokenizer import load_image_tokenizer
from dalle.sampling.generate import GENERATION_CONFIG, TextToImage, write_sampling_defaults
from dalle.sampling.sampler import SamplingConfig
from dalle.tokenizers.text import TokenizerConfig
from dalle.training.caption_tokenizer import TokenizerTrainConfig, train_caption_tokenizer
from dalle.training.loop import LoopConfig, resolve_device
from dalle.training.runner import final_eval, run_training
from dalle.training.stages import CLIP_STAGE, IMAGE_TOKENIZER, STAGES, TRANSFORMER, StageSpec

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass
class DemoConfig:
    """What `dalle demo` runs; ``smoke`` shrinks every stage for tests."""

    seed: int = 0
    image_size: int = 64
    prompts: int = 64  # per split
    tokenizer_captions: int = 20_000
    tokenizer_vocab: int = 512
    caption_length: int = 24  # captions are at most 13 BPE tokens; BPE dropout lengthens them
    # Training scenes encoded once into token shards, which the transformer reads instead
    # of rendering and encoding images at every step; about one pass in its time budget.
    token_samples: int = 25_000
    image_tokenizer_config: Path = CONFIG_DIR / "fsq-shapes-demo.yaml"
    dalle_config: Path = CONFIG_DIR / "dalle-shapes-demo.yaml"
    clip_config: Path = CONFIG_DIR / "clip-shapes-demo.yaml"
    # Every stage a few updates of a tiny model (:func:`shrink`): for tests, not for looking at.
    smoke: bool = False
    # Samples drawn per prompt; the demo's CLIP keeps the best one (1: no re-ranking).
    # 32 rather than 8: the CLIP keeps a passing sample for 3-4 points more prompts, for
    # about 50 s more sampling (BENCHMARKS.md, sixth session).
    candidates: int = 32
    # Sampling settings tried on validation prompts (not the demo's); the best is written
    # to the transformer's folder as its recommended settings, and the demo samples with it.
    sampling_candidates: list[SamplingConfig] = field(default_factory=sampling_candidates)
    validation_prompts: int = 64  # per split
    # Where the demo encodes scenes and samples ("auto": the GPU if there is one); the
    # training stages choose their own (loop.device, also "auto").
    device: str = "auto"
    sample_batch: int = 64  # prompts x candidates sampled at once
    encode_workers: int = 0  # processes rendering the scenes that stage 3 encodes
    # Every training stage's time budget and planned updates times this factor (and the
    # encoded scenes too, so the transformer still sees each about once): what more or
    # less compute buys. 1 is the demo as tuned; see :func:`scale_for_minutes`.
    training_scale: float = 1.0
    # The image tokenizer and the CLIP need nothing of each other: train them at once, each
    # in its own process on half the cores. These small models use a second core poorly
    # (each makes 58-63% of its two-core rate on one, BENCHMARKS.md), so side by side they
    # do 1.2 times the work of one after the other, and the transformer, whose updates buy
    # the most, gets the time saved. (Beside the transformer instead, the CLIP cost it
    # updates it could not spare: BENCHMARKS.md.)
    side_by_side: bool = True

    @property
    def scenes(self) -> int:
        """Training scenes encoded into token shards, at this training scale."""
        return max(1, round(self.token_samples * self.training_scale))


def scale_loop(loop: LoopConfig, scale: float) -> LoopConfig:
    """``loop`` with its time budget, planned updates and their intervals times ``scale``
    (warm-up and logging unchanged); 1 returns it as is."""
    if scale == 1.0:
        return loop
    times = lambda n: max(1, round(n * scale))  # noqa: E731
    return replace(loop, steps=times(loop.steps), eval_every=times(loop.eval_every),
                   checkpoint_every=times(loop.checkpoint_every),
                   max_minutes=loop.max_minutes * scale)  # fmt: skip


def stage_configs(c: DemoConfig, out: Path) -> dict[str, tuple[StageSpec, Any]]:
    """The settings of the demo's trained stages, by run folder under ``out``: each its
    config file, composed with the folders it reads and the demo's seed and image size."""
    image_stage, image_tokenizer = IMAGE_TOKENIZER.build_config(c.image_tokenizer_config, [])
    transformer = TRANSFORMER.build_config(c.dalle_config, [])
    # The shards' source is named once they exist (see run_demo).
    transformer = replace(transformer, image_tokenizer=str(out / "image_tokenizer"),
                          tokenizer=str(out / "tokenizer"))  # fmt: skip
    clip = replace(CLIP_STAGE.build_config(c.clip_config, []), tokenizer=str(out / "tokenizer"))
    stages = {"image_tokenizer": (image_stage, image_tokenizer),
              "dalle": (TRANSFORMER, transformer), "clip": (CLIP_STAGE, clip)}  # fmt: skip
    return {name: (stage, _seeded(shrink(stage, config) if c.smoke else config, c))
            for name, (stage, config) in stages.items()}  # fmt: skip


def _seeded(config: Any, c: DemoConfig) -> Any:
    return replace(config, data=replace(config.data, image_size=c.image_size, seed=c.seed),
                   loop=replace(config.loop, seed=c.seed))  # fmt: skip


# The smoke demo's models: each stage's demo model made tiny.
SMOKE_MODELS = {
    "FSQ": dict(hidden_width=8, levels=[5, 5]),
    "transformer": dict(width=32, layers=2, heads=2, attention=["full", "full"]),
    "CLIP": dict(text_width=32, image_width=32, embed_dim=16, text_layers=1, image_layers=1,
                 text_heads=2, image_heads=2, conv_stem_width=4),
}  # fmt: skip


def shrink(stage: StageSpec, config: Any) -> Any:
    """``config`` made to run in seconds: 4 updates of a tiny model on batches of 4,
    evaluated on 8 samples; every code path of the stage, nothing worth looking at."""
    loop = replace(config.loop, steps=4, eval_every=4, checkpoint_every=4, log_every=2)
    small_eval = {"samples": 8, "grid": 2, "shapes_zero_shot": 42}
    known = {f.name for f in fields(config.eval)}
    evaluation = replace(config.eval, **{k: v for k, v in small_eval.items() if k in known})
    return replace(config, model=replace(config.model, **SMOKE_MODELS[stage.name]), loop=loop,
                   data=replace(config.data, batch_size=4), eval=evaluation)  # fmt: skip


def demo_training_minutes(c: DemoConfig) -> float:
    """The demo's training time budget at scale 1, on the clock: every stage's minutes
    added up, with the image tokenizer and the CLIP counted once, as the longer of the
    two, when they train side by side."""
    minutes = {name: config.loop.max_minutes or 0
               for name, (_, config) in stage_configs(c, Path()).items()}  # fmt: skip
    if c.side_by_side:
        return max(minutes["image_tokenizer"], minutes["clip"]) + minutes["dalle"]
    return sum(minutes.values())


def scale_for_minutes(c: DemoConfig, minutes: float) -> float:
    """The ``training_scale`` that gives ``minutes`` of training over all stages."""
    if minutes <= 0:
        raise ValueError(f"--training-minutes must be positive, not {minutes:g}")
    return minutes / demo_training_minutes(c)


def smoke_config() -> DemoConfig:
    """Every stage in seconds: a few updates each; for tests, not for looking at."""
    return DemoConfig(
        prompts=4,
        tokenizer_captions=500,
        tokenizer_vocab=300,
        token_samples=64,
        smoke=True,
        candidates=2,
        sampling_candidates=sampling_candidates((1.0, 0.5), (1.0,)),
        validation_prompts=2,
    )


def gpu_config() -> DemoConfig:
    """The demo sized for one GPU (``dalle demo --profile gpu``): larger models, batches and
    token shards (configs/*-shapes-gpu.yaml), more test prompts, sampling in large batches."""
    return DemoConfig(
        prompts=200,
        token_samples=400_000,
        image_tokenizer_config=CONFIG_DIR / "fsq-shapes-gpu.yaml",
        dalle_config=CONFIG_DIR / "dalle-shapes-gpu.yaml",
        clip_config=CONFIG_DIR / "clip-shapes-gpu.yaml",
        sample_batch=1024,
        encode_workers=8,
        # The tokenizer and the CLIP are small enough to share one GPU, as they share
        # the CPU's cores in the CPU demo.
        side_by_side=True,
    )


def _stage(name: str, done: bool) -> bool:
    print(f"[demo] {name}: {'reusing the finished stage' if done else 'running'}", flush=True)
    return not done


def _train_stage(title: str, out: Path, stage: StageSpec, config: Any, scale: float) -> float:
    """Runs (or resumes) one training stage; returns the seconds it took this time."""
    marker = out / ".complete"
    if not _stage(title, marker.exists()):
        return 0.0
    start = time.perf_counter()
    config = replace(config, loop=scale_loop(config.loop, scale))
    run_training(stage, config, out)
    marker.touch()
    print(f"[demo] {title}: {updates_report(out, config.loop.steps)}", flush=True)
    return time.perf_counter() - start


def encode_scenes(image_tokenizer: Path, c: DemoConfig, out: Path) -> None:
    """Encodes ``c.scenes`` training scenes into token shards under ``out`` (a
    half-written folder from an interrupted run is started again)."""
    shutil.rmtree(out, ignore_errors=True)
    data = DataConfig(source="shapes", image_size=c.image_size, seed=c.seed, count=c.scenes,
                      num_workers=c.encode_workers)  # fmt: skip
    model = load_image_tokenizer(image_tokenizer, resolve_device(c.device))
    write_token_shards(model, folder_hash(image_tokenizer), data, out,
                       batch_size=max(64, c.sample_batch), progress=False)  # fmt: skip


def updates_report(out: Path, planned: int) -> str:
    """How many updates a finished stage made, said loudly when its time budget cut them:
    a slower machine trains a weaker model, and the user should know it did."""
    from dalle.training.loop import read_metrics

    end = next(
        (r for r in reversed(read_metrics(out / "metrics.jsonl")) if r.get("event") == "end"), {}
    )
    done, minutes = end.get("step", 0), end.get("elapsed_s", 0.0) / 60
    line = f"{done:,} of {planned:,} planned updates in {minutes:.1f} min"
    if done < planned:
        line += " (the time budget ended it"
        # Planned updates are about what the 2-core reference machine makes in the budget.
        if done < 0.8 * planned:
            line += ("; this machine is slower (or busier) than the one the demo was tuned on, so "
                     "expect weaker results than BENCHMARKS.md reports")  # fmt: skip
        line += ")"
    return line


def run_demo(out: Path, config: DemoConfig | None = None) -> int:
    c = config or DemoConfig()
    out.mkdir(parents=True, exist_ok=True)
    if c.training_scale != 1.0:
        minutes = demo_training_minutes(c) * c.training_scale
        print(f"[demo] training budget scaled by {c.training_scale:.3g}: {minutes:.1f} min "
              "over all stages", flush=True)  # fmt: skip
    start = time.perf_counter()
    seconds = _train_every_stage(c, out)
    reranker = out / "clip" if c.candidates > 1 else None
    pipe = TextToImage.from_pretrained(out / "dalle", reranker=reranker,
                                       device=resolve_device(c.device))  # fmt: skip
    seconds["sampling_settings"] = _choose_sampling(c, out, pipe)
    results: dict = {"clip": final_eval(out / "clip")}
    for name, split in (("seen", "train"), ("zeroshot", "zeroshot")):
        results[name], seconds[f"sample_{name}"] = _sample_and_judge(c, out / name, split, pipe)
    results["seconds_this_run"] = {k: round(v, 1) for k, v in seconds.items() if v}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"[demo] grids: {out / 'seen_grid.png'}, {out / 'zeroshot_grid.png'}; "
          f"results: {out / 'results.json'} ({time.perf_counter() - start:.0f}s)")  # fmt: skip
    return 0


def _train_every_stage(c: DemoConfig, out: Path) -> dict[str, float]:
    """Stages 1-5, each skipped when a previous run finished it; the seconds each took."""
    stages, seconds = stage_configs(c, out), {}
    tokenizer_dir = out / "tokenizer"
    if _stage(f"caption tokenizer (BPE on {c.tokenizer_captions:,} training captions)",
              (tokenizer_dir / "tokenizer.json").exists()):  # fmt: skip
        t = time.perf_counter()
        bpe = TokenizerConfig(vocab_size=c.tokenizer_vocab, max_length=c.caption_length,
                              max_captions=c.tokenizer_captions)  # fmt: skip
        data = DataConfig(source="shapes", seed=c.seed, subset="train")
        train_caption_tokenizer(TokenizerTrainConfig(data, bpe), tokenizer_dir)
        seconds["tokenizer"] = time.perf_counter() - t
    stage, settings = stages["image_tokenizer"]
    image_tokenizer = (f"image tokenizer ({settings.preset})", out / "image_tokenizer", stage,
                       settings)  # fmt: skip
    clip = ("CLIP (re-ranks the samples)", out / "clip", *stages["clip"])
    if c.side_by_side:
        seconds["image_tokenizer"], seconds["clip"] = _side_by_side(image_tokenizer, clip,
                                                                    c.training_scale)  # fmt: skip
    else:
        seconds["image_tokenizer"] = _train_stage(*image_tokenizer, c.training_scale)
    tokens_dir = out / "image_tokens"
    if _stage(f"image tokens ({c.scenes:,} training scenes encoded once)",
              (tokens_dir / META_FILE).exists()):  # fmt: skip
        t = time.perf_counter()
        encode_scenes(out / "image_tokenizer", c, tokens_dir)
        seconds["image_tokens"] = time.perf_counter() - t
    stage, settings = stages["dalle"]
    settings = replace(settings, data=replace(settings.data, source=shards_pattern(tokens_dir)))
    seconds["transformer"] = _train_stage("transformer", out / "dalle", stage, settings,
                                          c.training_scale)  # fmt: skip
    if not c.side_by_side:
        seconds["clip"] = _train_stage(*clip, c.training_scale)
    return seconds


Job = tuple[str, Path, StageSpec, Any]  # a training stage: title, run folder, spec, settings


def _side_by_side(here: Job, beside: Job, scale: float) -> tuple[float, float]:
    """Trains ``here`` in this process and ``beside`` in a child process at the same time,
    each on half of this process's threads; the child's output goes to ``train.log`` in
    its run folder. The seconds each took. This process's thread count is restored after."""
    threads, child = torch.get_num_threads(), None
    if threads < 2:  # one core: nothing to share
        return _train_stage(*here, scale), _train_stage(*beside, scale)
    here, beside = _on_threads(here, threads // 2), _on_threads(beside, threads // 2)
    title, out, stage, config = beside
    if _stage(title, (out / ".complete").exists()):
        out.mkdir(parents=True, exist_ok=True)
        log = out / "train.log"
        print(f"[demo] {title}: trains beside the {here[0]}, each on half the cores; "
              f"progress in {log}", flush=True)  # fmt: skip
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no shared state
        child = context.Process(target=_train_in_child, args=(title, out, stage.name, config,
                                                              scale, log))  # fmt: skip
        child.start()
    start = time.perf_counter()
    try:
        seconds_here = _train_stage(*here, scale)
        if child is None:
            return seconds_here, 0.0
        child.join()
    finally:
        torch.set_num_threads(threads)
        if child is not None and child.is_alive():  # interrupted here: stop it too (it
            child.terminate()  # checkpoints on SIGTERM, so the next run resumes it)
            child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the {title} stage stopped (exit code {child.exitcode}); its "
                           f"output is in {out / 'train.log'}")  # fmt: skip
    planned = scale_loop(config.loop, scale).steps
    print(f"[demo] {title}: {updates_report(out, planned)}", flush=True)
    return seconds_here, time.perf_counter() - start


def _on_threads(job: Job, threads: int) -> Job:
    """``job`` with its loop on ``threads`` CPU threads (at least 1)."""
    title, out, stage, config = job
    loop = replace(config.loop, threads=max(1, threads))
    return title, out, stage, replace(config, loop=loop)


def _train_in_child(
    title: str, out: Path, stage_name: str, config: Any, scale: float, log: Path
) -> None:
    """A child process's side of :func:`_side_by_side`: one stage, its output to ``log``."""
    import logging
    import traceback

    stream = open(log, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - open until exit
    sys.stdout = sys.stderr = stream
    logging.basicConfig(stream=stream, level=logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    stage = next(s for s in STAGES if s.name == stage_name)
    try:
        with InterruptGuard():
            _train_stage(title, out, stage, config, scale)
    except BaseException:  # the parent reads the exit code; the log keeps the reason
        traceback.print_exc()
        raise SystemExit(1) from None


def _choose_sampling(c: DemoConfig, out: Path, pipe: TextToImage) -> float:
    """Stage 6: the sampling settings, chosen on validation prompts and recorded in the
    transformer's folder (unless a previous run did); the seconds it took."""
    where = out / "dalle" / GENERATION_CONFIG
    if not _stage(f"sampling settings ({len(c.sampling_candidates)} tried on "
                  f"{c.validation_prompts} validation prompts per split)",
                  where.exists()):  # fmt: skip
        return 0.0
    t = time.perf_counter()
    best, record = choose_sampling(pipe, c.sampling_candidates, c.validation_prompts, c.seed,
                                   c.sample_batch)  # fmt: skip
    write_sampling_defaults(out / "dalle", best, record)
    pipe.defaults = best
    print(f"[demo] sampling settings: temperature {best.temperature:g}, guidance "
          f"{best.guidance_scale:g}, recorded in {where}")  # fmt: skip
    return time.perf_counter() - t


def _sample_and_judge(
    c: DemoConfig, folder: Path, split: str, pipe: TextToImage
) -> tuple[dict, float]:
    """Stage 7 for one split: the kept samples of its test prompts (unless a previous run
    wrote them), and the judge's report on them; the seconds sampling took."""
    name, marker, rates_file = folder.name, folder / ".complete", folder / "pass_rates.json"
    t = time.perf_counter()
    if _stage(f"{name} samples ({c.prompts} {split}-split prompts, best of "
              f"{c.candidates} by CLIP)", marker.exists()):  # fmt: skip
        prompts = shapes_prompts(split, c.prompts, c.image_size, c.seed)
        rates = generate_and_judge(pipe, prompts, folder, pipe.defaults, c.seed,
                                   batch_size=c.sample_batch, candidates=c.candidates)  # fmt: skip
        rates_file.write_text(json.dumps(rates))
        marker.touch()
    took = time.perf_counter() - t
    report = judge_directory(folder)
    result = {k: v for k, v in report.to_json().items() if k != "failures"}
    first = json.loads(rates_file.read_text()).get("pass_rate_first_candidate")
    if first is not None:
        result["accuracy_without_reranking"] = first
        print(f"[demo] {name}: first sample of each prompt passes {first:.1%}; the "
              f"best of {c.candidates} by CLIP {report.accuracy:.1%}")  # fmt: skip
    print(f"[demo] judge on {name} samples: {report.summary()}", flush=True)
    return result, took
