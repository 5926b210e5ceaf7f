"""Training the DALL-E transformer on image tokens from a frozen image tokenizer (dVAE or
FSQ) and BPE captions."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from dalle.data.datasets import Batch, load_samples
from dalle.data.images import make_grid
from dalle.data.token_shards import token_shard_meta
from dalle.files import folder_hash
from dalle.models.dalle_transformer import DALLEConfig, DALLETransformer
from dalle.models.image_tokenizer import ImageTokenizer, load_image_tokenizer
from dalle.sampling.generate import IMAGE_TOKENIZER_DIR
from dalle.sampling.sampler import SamplingConfig, sample_image_tokens
from dalle.tokenizers.text import PAD_ID, TextTokenizer
from dalle.training.loop import Metrics, OptimConfig, RunConfig, optim_defaults
from dalle.training.parallelize import build_model

log = logging.getLogger(__name__)


@dataclass
class DALLEEvalConfig:
    samples: int = 256  # held-out pairs for the validation loss
    grid: int = 8  # held-out captions sampled into the grid at each evaluation
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class DALLETrainConfig(RunConfig):
    """Everything `dalle train` needs. Vocabulary sizes, caption length and token grid
    are taken from the caption tokenizer and the image tokenizer, whatever the preset says."""

    preset: str = "dalle-bench"
    model: DALLEConfig = field(default_factory=DALLEConfig)
    image_tokenizer: str = ""  # folder of a trained image tokenizer (dVAE, FSQ)
    tokenizer: str = ""  # folder with tokenizer.json
    bpe_dropout: float = 0.1  # the paper's
    caption_dropout: float = 0.1  # share of empty captions, for classifier-free guidance
    # The paper: AdamW (0.9, 0.96), weight decay 4.5e-2 except gains, biases, embeddings.
    optim: OptimConfig = optim_defaults(lr=4.5e-4, final_lr=1.4e-5, warmup_steps=500,
                                        betas=[0.9, 0.96], weight_decay=4.5e-2,
                                        grad_clip=1.0)  # fmt: skip
    eval: DALLEEvalConfig = field(default_factory=DALLEEvalConfig)


def check_token_shards(config: DALLETrainConfig) -> None:
    """Pre-tokenized shards must come from this image tokenizer, at this image size."""
    meta = token_shard_meta(config.data.source)
    if meta is None:
        return
    if meta["image_tokenizer_hash"] != folder_hash(Path(config.image_tokenizer)):
        raise ValueError(f"{config.data.source} was tokenized by another image tokenizer than "
                         f"{config.image_tokenizer}: tokenize again, or train with that "
                         "one")  # fmt: skip
    if meta["image_size"] != config.data.image_size:
        raise ValueError(f"{config.data.source} holds {meta['image_size']}px images' tokens; "
                         f"set data.image_size={meta['image_size']}")  # fmt: skip


def fit_to_tokenizers(
    config: DALLETrainConfig, tokenizer: TextTokenizer, image_tokenizer: ImageTokenizer
) -> None:
    """Sets the model's vocabularies, caption length and grid from what it is trained on."""
    m = config.model
    m.text_vocab_size = tokenizer.vocab_size
    m.text_len = tokenizer.max_length
    m.image_vocab_size = image_tokenizer.vocab_size
    m.image_grid = image_tokenizer.token_grid(config.data.image_size)


class DALLETask:
    def __init__(self, config: DALLETrainConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.tokenizer = TextTokenizer.load(config.tokenizer)
        self.image_tokenizer = load_image_tokenizer(config.image_tokenizer, device)
        check_token_shards(config)
        fit_to_tokenizers(config, self.tokenizer, self.image_tokenizer)
        self.model = build_model(DALLETransformer, config.model, device)
        holdout = load_samples(replace(config.data, subset="holdout"), config.eval.samples)
        self.eval_captions = holdout.captions
        self.eval_text = self.tokenizer.encode(self.eval_captions).ids
        self.eval_tokens = self.image_tokens(holdout).cpu()  # [N, h*w]

    @torch.no_grad()
    def image_tokens(self, batch: Batch) -> torch.Tensor:
        """A batch's image tokens ``[B, h*w]`` on the device: read from pre-tokenized shards,
        or encoded from its images."""
        if batch.tokens is not None:
            return batch.tokens.flatten(1).to(self.device, non_blocking=True)
        images = batch.images.to(self.device, non_blocking=True)
        return torch.cat([self.image_tokenizer.encode(b).flatten(1) for b in images.split(128)])

    def training_loss(self, batch: Batch, position: float) -> tuple[torch.Tensor, Metrics]:
        image = self.image_tokens(batch)
        text = self.tokenizer.encode(batch.captions, dropout=self.config.bpe_dropout).ids.to(
            self.device
        )
        if self.config.caption_dropout > 0:
            empty = torch.rand(text.shape[0], device=self.device) < self.config.caption_dropout
            text = torch.where(empty[:, None], torch.full_like(text, PAD_ID), text)
        out = self.model.loss(text, image)
        return out["loss"], {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def validation_loss(self, batch_size: int = 64) -> dict[str, float]:
        totals = {"loss": 0.0, "text_loss": 0.0, "image_loss": 0.0}
        count = len(self.eval_captions)
        for start in range(0, count, batch_size):
            text = self.eval_text[start : start + batch_size].to(self.device)
            image = self.eval_tokens[start : start + batch_size].to(self.device)
            out = self.model.loss(text, image)
            for key in totals:
                totals[key] += out[key].item() * len(text) / count
        return {f"val_{k}": v for k, v in totals.items()}

    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        metrics = self.validation_loss()
        n = min(self.config.eval.grid, len(self.eval_captions))
        generator = torch.Generator(device=self.device).manual_seed(step)
        tokens = sample_image_tokens(self.model, self.eval_text[:n].to(self.device),
                                     self.config.eval.sampling, generator=generator)  # fmt: skip
        grid = self.config.model.image_grid
        images = self.image_tokenizer.decode(tokens.view(n, grid, grid)).cpu()
        (out_dir / "samples").mkdir(exist_ok=True)
        make_grid(images, columns=min(8, n)).save(out_dir / "samples" / f"samples-{step:07d}.png")
        (out_dir / "samples" / f"samples-{step:07d}.json").write_text(
            json.dumps(self.eval_captions[:n], indent=1)
        )
        return metrics

    def export(self, out_dir: Path, model: nn.Module) -> None:
        """A self-contained model folder: ``model`` (the trained weights, whole),
        tokenizer/ and image_tokenizer/."""
        model.save_pretrained(out_dir)  # type: ignore[operator]
        self.tokenizer.save(out_dir / "tokenizer")
        self.image_tokenizer.save_pretrained(out_dir / IMAGE_TOKENIZER_DIR)
