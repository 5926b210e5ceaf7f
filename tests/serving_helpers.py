"""Tiny model folders for the server's tests, and backends that misbehave on purpose."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dalle.data.shapes_world import sample_caption
from dalle.models.clip import CLIP, CLIP_PRESETS
from dalle.models.dalle_transformer import DALLE_PRESETS, DALLETransformer
from dalle.models.decoder import DECODER_PRESETS, ImageDecoder
from dalle.models.fsq import FSQ_PRESETS, FSQTokenizer
from dalle.models.prior import PRIOR_PRESETS, DiffusionPrior
from dalle.sampling.sampler import SamplingConfig
from dalle.serving.backend import DalleBackend, OnStep
from dalle.tokenizers.text import TextTokenizer, TokenizerConfig

TEXT_LENGTH = 40


def make_tiny_models(root: Path) -> tuple[Path, Path]:
    """A model folder (untrained tiny transformer, tiny FSQ: 8x8 images of 4x4 tokens,
    BPE of 40 tokens) and a tiny CLIP folder beside it. Seeded, so every run is alike."""
    torch.manual_seed(0)
    captions = [sample_caption(0, i) for i in range(2000)]
    config = TokenizerConfig(vocab_size=300, max_length=TEXT_LENGTH, max_captions=None)
    tokenizer = TextTokenizer.train(captions, config)
    image_tokenizer = FSQTokenizer(FSQ_PRESETS["fsq-tiny"])
    model = DALLETransformer(replace(
        DALLE_PRESETS["dalle-tiny"], text_vocab_size=tokenizer.vocab_size,
        text_len=TEXT_LENGTH, image_vocab_size=image_tokenizer.vocab_size, image_grid=4,
    ))  # fmt: skip
    model_dir, clip_dir = root / "dalle", root / "clip"
    model.save_pretrained(model_dir)
    tokenizer.save(model_dir / "tokenizer")
    image_tokenizer.save_pretrained(model_dir / "image_tokenizer")
    clip = CLIP(replace(CLIP_PRESETS["clip-tiny"], text_vocab_size=tokenizer.vocab_size,
                        text_len=TEXT_LENGTH))  # fmt: skip
    clip.save_pretrained(clip_dir)
    tokenizer.save(clip_dir / "tokenizer")
    return model_dir, clip_dir


def train_tiny_token_unclip(root: Path, decoder_config: Path) -> dict[str, Path]:
    """A tiny CLIP and FSQ tokenizer (32-pixel images, 16x16 tokens of 25), a prior, and a
    decoder of tokens trained on them with ``decoder_config`` (a few updates each)."""
    from dalle.cli import main

    configs = Path(__file__).parent.parent / "configs"
    clip = make_tiny_models(root)[1]
    fsq = root / "fsq"
    assert main(["train-image-tokenizer", "--preset", "fsq-tiny", "--out", str(fsq),
                 "data.source=shapes", "data.image_size=32", "data.batch_size=4",
                 "loop.steps=2", "loop.eval_every=2", "eval.samples=4"]) == 0  # fmt: skip
    prior, decoder = root / "prior", root / "decoder"
    assert main(["train-prior", "--config", str(configs / "prior-tiny-cpu.yaml"), "--clip",
                 str(clip), "--out", str(prior)]) == 0  # fmt: skip
    assert main(["train-decoder", "--config", str(decoder_config), "--clip", str(clip),
                 "--out", str(decoder), f"image_tokenizer={fsq}"]) == 0  # fmt: skip
    return {"root": root, "clip": clip, "fsq": fsq, "prior": prior, "decoder": decoder}


def make_tiny_unclip(root: Path, clip_dir: Path) -> tuple[Path, Path]:
    """Untrained tiny DALL-E 2 folders (prior, decoder of 32x32 images) over ``clip_dir``,
    each with a copy of that CLIP as the trained commands export them."""
    torch.manual_seed(1)
    clip = CLIP.from_pretrained(clip_dir)
    tokenizer = TextTokenizer.load(clip_dir / "tokenizer")
    shared = dict(text_vocab_size=tokenizer.vocab_size, text_len=TEXT_LENGTH,
                  embed_dim=clip.config.embed_dim)  # fmt: skip
    prior = DiffusionPrior(replace(PRIOR_PRESETS["prior-tiny"], **shared))
    decoder = ImageDecoder(replace(DECODER_PRESETS["decoder-tiny"], **shared, image_size=32))
    torch.nn.init.normal_(decoder.unet.conv_out.weight, std=0.1)  # it starts at zero
    folders = (root / "prior", root / "decoder")
    for model, folder in zip((prior, decoder), folders, strict=True):
        model.save_pretrained(folder)
        shutil.copytree(clip_dir, folder / "clip")
    return folders


@dataclass
class SlowBackend:
    """A real backend whose every sampling step also sleeps, so that a test (or a
    person in a browser) can watch, cancel or time out a running job; and which fails
    any batch holding the prompt ``fail_on``."""

    inner: DalleBackend
    step_seconds: float = 0.0
    fail_on: str | None = None

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def draw(self, prompts: list[str], sampling: SamplingConfig,
             generators: list[torch.Generator], on_step: OnStep) -> torch.Tensor:  # fmt: skip
        if self.fail_on in prompts:
            raise RuntimeError(f"this backend fails on {self.fail_on!r}")

        def slow_step(step: int) -> None:
            time.sleep(self.step_seconds)
            on_step(step)

        return self.inner.draw(prompts, sampling, generators, slow_step)
