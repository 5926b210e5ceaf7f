"""`dalle demo --pipeline unclip`: DALL-E 2 on Shapes World, on a CPU.

Stages, each reused when a previous run finished it:

1. the caption BPE, the FSQ image tokenizer and the CLIP: the DALL-E demo's
   (``outputs/demo/tokenizer``, ``image_tokenizer`` and ``clip``) when they exist, else
   trained here with the DALL-E demo's settings;
2. the diffusion prior (caption -> CLIP image embedding) on the frozen CLIP;
3. the decoder (CLIP image embedding and caption -> 64x64 image) on the frozen CLIP: by
   default a transformer drawing the image tokenizer's 8x8 tokens one after another,
   which the tokenizer's decoder turns into pixels; ``decoder="latent"`` draws the
   tokenizer's code grid by Gaussian diffusion instead, ``decoder="tokens"`` its tokens
   by masked-token diffusion, and ``decoder="pixel"`` is the paper's pixel decoder; on
   this CPU those three draw blobs after 12 minutes (BENCHMARKS.md);
4. for seen-combination and zero-shot prompts (the DALL-E demo's, so the two systems are
   judged on the same prompts), several images per prompt of which the CLIP keeps the
   best, written as ``NNNN.png`` + ``NNNN.txt`` under ``seen/`` and ``zeroshot/``, with
   grids and the judge's verdicts (and those of each prompt's first image) in
   ``results.json``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from dalle.data.datasets import DataConfig
from dalle.data.images import make_grid
from dalle.demo import (
    CONFIG_DIR,
    DemoConfig,
    _seeded,
    _stage,
    _train_stage,
    scale_loop,
    stage_configs,
)
from dalle.evaluation.shapes_judge import judge_directory
from dalle.evaluation.text_to_image import shapes_prompts
from dalle.sampling.generate import write_images
from dalle.sampling.unclip import UnCLIP
from dalle.tokenizers.text import TokenizerConfig
from dalle.training.caption_tokenizer import TokenizerTrainConfig, train_caption_tokenizer
from dalle.training.runner import final_eval
from dalle.training.stages import DECODER, PRIOR, TOKEN_DECODER, TRANSFORMER_DECODER


@dataclass
class UnCLIPDemoConfig:
    base: DemoConfig  # seed, image size, prompts, the BPE's and the CLIP's settings
    reuse: Path | None = Path("outputs/demo")  # a DALL-E demo folder to take BPE and CLIP from
    prior_config: Path = CONFIG_DIR / "prior-shapes-demo.yaml"
    # What the decoder draws: the image tokenizer's codes by Gaussian diffusion ("latent"),
    # its tokens by masked-token diffusion ("tokens") or one after another with a
    # transformer ("transformer"), or pixels ("pixel", the paper's).
    decoder: str = "transformer"
    decoder_config: Path | None = None  # None: the demo's config for the decoder's kind
    candidates: int = 4  # images drawn per prompt; the CLIP keeps the best
    prior_steps: int = 32  # DDIM steps
    decoder_steps: int = 25
    decoder_guidance: float = 3.0
    # Token and transformer decoders: the temperature of their token draws.
    decoder_temperature: float = 1.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.decoder not in DECODER_CONFIGS:
            raise ValueError(f"decoder must be one of {', '.join(DECODER_CONFIGS)}, "
                             f"not {self.decoder!r}")  # fmt: skip

    @property
    def needs_image_tokenizer(self) -> bool:
        return self.decoder != "pixel"


def cpu_unclip_config(base: DemoConfig, reuse: Path | None, decoder: str) -> UnCLIPDemoConfig:
    """``dalle demo --pipeline unclip``: the decoder kind's own sampling settings."""
    return UnCLIPDemoConfig(base, reuse=reuse, decoder=decoder, **DECODER_SAMPLING.get(decoder, {}))


GPU_DECODER_CONFIGS = {"transformer": CONFIG_DIR / "transformer-decoder-shapes-gpu.yaml",
                       "latent": CONFIG_DIR / "decoder-latent-shapes-gpu.yaml"}  # fmt: skip


def gpu_unclip_config(base: DemoConfig, reuse: Path | None, decoder: str) -> UnCLIPDemoConfig:
    """``dalle demo --pipeline unclip --profile gpu``: the prior and the decoder (the
    transformer or the latent one) in large batches, 2 + 5 minutes on the clock (the GPU
    demo transformer's 7), and 32 draws per prompt for the CLIP to choose from, as the
    DALL-E GPU demo."""
    if decoder not in GPU_DECODER_CONFIGS:
        raise ValueError(f"--profile gpu sizes the {' and '.join(GPU_DECODER_CONFIGS)} "
                         f"decoders, not {decoder!r}")  # fmt: skip
    settings = {**DECODER_SAMPLING.get(decoder, {}), "candidates": 32, "batch_size": 512}
    return UnCLIPDemoConfig(base, reuse=reuse, decoder=decoder,
                            prior_config=CONFIG_DIR / "prior-shapes-gpu.yaml",
                            decoder_config=GPU_DECODER_CONFIGS[decoder], **settings)  # fmt: skip


SMOKE_PRIOR = dict(width=32, layers=1, heads=2)
SMOKE_DECODERS = {
    "latent": dict(channels=[8, 16], attention=[False, True], head_dim=8, norm_groups=4,
                   context_width=16, text_heads=2, text_layers=1),
    "tokens": dict(width=32, layers=1, heads=2, token_width=16, context_width=16, text_heads=2,
                   text_layers=1),
    "transformer": dict(width=32, layers=1, heads=2, attention=["full"]),
}  # fmt: skip
SMOKE_DECODERS["pixel"] = SMOKE_DECODERS["latent"]
DECODER_CONFIGS = {"latent": CONFIG_DIR / "decoder-latent-shapes-demo.yaml",
                   "tokens": CONFIG_DIR / "token-decoder-shapes-demo.yaml",
                   "transformer": CONFIG_DIR / "transformer-decoder-shapes-demo.yaml",
                   "pixel": CONFIG_DIR / "decoder-shapes-demo.yaml"}  # fmt: skip
DECODER_STAGES = {"tokens": TOKEN_DECODER, "transformer": TRANSFORMER_DECODER}
# A transformer decoder draws an image in 64 cheap steps, so the CLIP chooses from 32 draws
# per prompt, as in the DALL-E demo, at the temperature and guidance that decoded held-out
# embeddings best; the prior then takes most of the sampling time, and 8 DDIM steps
# instead of 32 lose nothing measurable (held-out cosine 0.963 against 0.965) at a
# quarter of the cost (BENCHMARKS.md). The others keep the defaults above.
DECODER_SAMPLING: dict[str, dict[str, Any]] = {
    "transformer": dict(candidates=32, decoder_guidance=2.0, decoder_temperature=0.5,
                        prior_steps=8, batch_size=256),
}  # fmt: skip


def _shared_stages(c: UnCLIPDemoConfig, out: Path) -> dict[str, float]:
    """The caption BPE, the image tokenizer (for a latent decoder) and the CLIP: copied
    from the DALL-E demo when it has finished them, else trained here."""
    seconds: dict[str, float] = {}
    finished = {"tokenizer": "tokenizer.json", "clip": ".complete"}
    if c.needs_image_tokenizer:
        finished["image_tokenizer"] = ".complete"
    for name, proof in finished.items():
        source = None if c.reuse is None else c.reuse / name
        if source is not None and (source / proof).exists() and not (out / name).exists():
            shutil.copytree(source, out / name)
            print(f"[demo] {name}: the DALL-E demo's ({source})", flush=True)
    if _stage("caption tokenizer", (out / "tokenizer" / "tokenizer.json").exists()):
        b = c.base
        bpe = TokenizerConfig(vocab_size=b.tokenizer_vocab, max_length=b.caption_length,
                              max_captions=b.tokenizer_captions)  # fmt: skip
        data = DataConfig(source="shapes", seed=b.seed, subset="train")
        train_caption_tokenizer(TokenizerTrainConfig(data, bpe), out / "tokenizer")
    stages = stage_configs(c.base, out)
    if c.needs_image_tokenizer:
        stage, settings = stages["image_tokenizer"]
        folder = out / "image_tokenizer"
        seconds["image_tokenizer"] = _train_stage("image tokenizer", folder, stage, settings,
                                                  c.base.training_scale)  # fmt: skip
    stage, clip = stages["clip"]
    seconds["clip"] = _train_stage("CLIP", out / "clip", stage, clip, c.base.training_scale)
    return seconds


def _diffusion_configs(c: UnCLIPDemoConfig, out: Path) -> dict[str, tuple[Any, Any]]:
    prior = replace(PRIOR.build_config(c.prior_config, []), clip=str(out / "clip"))
    path = c.decoder_config or DECODER_CONFIGS[c.decoder]
    stage = DECODER_STAGES.get(c.decoder, DECODER)
    decoder = replace(stage.build_config(path, []), clip=str(out / "clip"))
    if c.needs_image_tokenizer:
        decoder = replace(decoder, image_tokenizer=str(out / "image_tokenizer"))
    if c.base.smoke:
        prior = _smoke(prior, SMOKE_PRIOR)
        decoder = _smoke(decoder, SMOKE_DECODERS[c.decoder])
    check_decoder_kind(c, decoder, out / "decoder")
    return {
        "prior": (PRIOR, _seeded(prior, c.base)),
        "decoder": (stage, _seeded(decoder, c.base)),
    }


def check_decoder_kind(c: UnCLIPDemoConfig, decoder: Any, folder: Path) -> None:
    """A decoder folder left by a run of another kind (another ``--decoder``, or an older
    demo's default) is refused, not reused or resumed in silence."""
    saved = folder / "train_config.yaml"
    if not saved.exists():
        return
    settings = OmegaConf.load(saved)
    preset, codes = settings.get("preset"), bool(settings.get("image_tokenizer"))
    if preset != decoder.preset or codes != bool(decoder.image_tokenizer):
        kind = "an image tokenizer's" if codes else "pixels"
        raise ValueError(f"{folder} holds a decoder of another kind ({preset}, drawing {kind}) "
                         f"than --decoder {c.decoder}: choose a fresh --out, or that "
                         "decoder")  # fmt: skip


def _smoke(config: Any, model: dict) -> Any:
    loop = replace(config.loop, steps=4, eval_every=4, checkpoint_every=4, log_every=2,
                   max_minutes=0.0, schedule_clock="steps")  # fmt: skip
    grid = {"grid": 2} if hasattr(config.eval, "grid") else {}
    evaluation = replace(config.eval, samples=8, **grid)
    extra = {"statistics_samples": 16} if hasattr(config, "statistics_samples") else {}
    return replace(config, model=replace(config.model, **model), loop=loop,
                   data=replace(config.data, batch_size=4), eval=evaluation, **extra)  # fmt: skip


def _sample_and_judge(c: UnCLIPDemoConfig, pipe: UnCLIP, folder: Path, split: str) -> dict:
    """The kept image of each test prompt, written and judged; and the judge on each
    prompt's first image, without re-ranking."""
    marker, first_file = folder / ".complete", folder / "first_draw.json"
    if _stage(f"{folder.name} samples ({c.base.prompts} {split}-split prompts, best of "
              f"{c.candidates} by CLIP)", marker.exists()):  # fmt: skip
        prompts = shapes_prompts(split, c.base.prompts, c.base.image_size, c.base.seed)
        out = pipe(prompts, c.candidates, prior_num_inference_steps=c.prior_steps,
                   decoder_num_inference_steps=c.decoder_steps,
                   decoder_guidance_scale=c.decoder_guidance,
                   generator=torch.Generator().manual_seed(c.base.seed),
                   batch_size=c.batch_size)  # fmt: skip
        best = out.scores.argmax(dim=1)
        kept = out.images[torch.arange(len(prompts)), best]
        write_images(kept, prompts, folder)
        make_grid(kept[:32], columns=8).save(folder.with_name(f"{folder.name}_grid.png"))
        with tempfile.TemporaryDirectory() as scratch:
            write_images(out.images[:, 0], prompts, Path(scratch))
            first_file.write_text(json.dumps(judge_directory(Path(scratch)).accuracy))
        marker.touch()
    report = judge_directory(folder)
    result = {k: v for k, v in report.to_json().items() if k != "failures"}
    result["accuracy_without_reranking"] = json.loads(first_file.read_text())
    print(f"[demo] judge on {folder.name} samples: {report.summary()}; first image of each "
          f"prompt {result['accuracy_without_reranking']:.1%}", flush=True)  # fmt: skip
    return result


def run_unclip_demo(out: Path, config: UnCLIPDemoConfig) -> int:
    c = config
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seconds = _shared_stages(c, out)
    stages = _diffusion_configs(c, out)
    for name, title in (("prior", "diffusion prior"), ("decoder", "decoder")):
        stage, settings = stages[name]
        settings = replace(settings, loop=scale_loop(settings.loop, c.base.training_scale))
        seconds[name] = _train_stage(title, out / name, stage, settings, 1.0)
    pipe = UnCLIP.from_pretrained(out / "decoder", out / "prior", precision="bf16")
    pipe.decoder_temperature = c.decoder_temperature
    results: dict = {"clip": final_eval(out / "clip"), "prior": final_eval(out / "prior"),
                     "decoder": final_eval(out / "decoder")}  # fmt: skip
    for name, split in (("seen", "train"), ("zeroshot", "zeroshot")):
        t = time.perf_counter()
        results[name] = _sample_and_judge(c, pipe, out / name, split)
        seconds[f"sample_{name}"] = time.perf_counter() - t
    results["seconds_this_run"] = {k: round(v, 1) for k, v in seconds.items() if v}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"[demo] grids: {out / 'seen_grid.png'}, {out / 'zeroshot_grid.png'}; "
          f"results: {out / 'results.json'} ({time.perf_counter() - start:.0f}s)")  # fmt: skip
    return 0
