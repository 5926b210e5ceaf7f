"""Training DALL-E 2's decoder on a frozen CLIP's image embeddings.

Each training image is diffused in [-1, 1] and the decoder learns its noise given the
image's own CLIP embedding and its caption; the embedding is replaced by the learned
null one 10% of the time and the caption by padding 50% of the time (the paper's
classifier-free guidance dropout).

Evaluation reports, on pairs kept out of training: the validation loss at fixed noise,
and held-out images decoded back from their CLIP embeddings (a grid: originals above,
decodings below); on Shapes World, the share of decodings the judge passes against the
original's caption, which says how much of a scene its CLIP embedding and the decoder
carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dalle.data.datasets import Batch, load_images
from dalle.data.images import make_grid, shrink
from dalle.evaluation.shapes_judge import pass_rate
from dalle.losses.diffusion import masked_token_loss
from dalle.models.decoder import DecoderConfig, ImageDecoder
from dalle.models.image_tokenizer import load_image_tokenizer, load_latent_tokenizer
from dalle.models.token_decoder import TokenDecoder, TokenDecoderConfig
from dalle.models.transformer_decoder import TransformerDecoder, TransformerDecoderConfig
from dalle.sampling.diffusion import noised, prediction_target, sample_images, to_model_range
from dalle.sampling.generate import IMAGE_TOKENIZER_DIR
from dalle.sampling.masked import mask_tokens, sample_tokens
from dalle.sampling.sampler import SamplingConfig, sample_image_tokens
from dalle.tokenizers.text import PAD_ID
from dalle.training.loop import Metrics, OptimConfig, RunConfig, optim_defaults
from dalle.training.parallelize import build_model
from dalle.training.prior_task import CLIP_DIR, fit_to_clip, load_frozen_clip

# Which rows ``[B]`` bool lose their caption and which their CLIP embedding; None: none.
Dropped = tuple[Tensor, Tensor] | tuple[None, None]


@dataclass
class DecoderEvalConfig:
    samples: int = 256  # held-out pairs for the validation loss
    grid: int = 16  # held-out images decoded from their embeddings (and judged)
    sample_steps: int = 50
    guidance_scale: float = 3.0


@dataclass
class DecoderTrainConfig(RunConfig):
    """Everything `dalle train-decoder` needs. Caption length, vocabulary, embedding
    width and image size come from the CLIP, its tokenizer and the data."""

    preset: str = "decoder-small"
    model: DecoderConfig = field(default_factory=DecoderConfig)
    clip: str = ""  # folder of a trained CLIP (`dalle train-clip`), with its tokenizer/
    # The decoder's image side; 0: the data's. A smaller one trains on the data's images
    # shrunk (area averaging) while the CLIP embeds them at the data's size: a small,
    # fast base model whose output an upsampler enlarges, as in the paper (64 -> 256).
    image_size: int = 0
    # A folder of a trained FSQ image tokenizer (`dalle train-image-tokenizer`): the
    # decoder then draws that tokenizer's code grid (8x8x4 for the demo's) and the
    # tokenizer's decoder turns it into pixels, as latent diffusion does (Rombach et al.
    # 2022; Kandinsky 2 pairs it with an unCLIP prior). Not in the paper, which diffuses
    # pixels; on a CPU, a code grid trains in minutes where 64x64 pixels do not.
    image_tokenizer: str = ""
    image_dropout: float = 0.1  # the paper's: CLIP embedding replaced by the null one
    caption_dropout: float = 0.5  # the paper's
    optim: OptimConfig = optim_defaults(
        lr=1.2e-4, final_lr=1.2e-6, warmup_steps=500, weight_decay=0.0, grad_clip=1.0
    )
    eval: DecoderEvalConfig = field(default_factory=DecoderEvalConfig)


class DecoderTask:
    model_class: type[nn.Module] = ImageDecoder

    def __init__(self, config: DecoderTrainConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self.clip, self.tokenizer = load_frozen_clip(config.clip, device)
        self.image_tokenizer = self.load_image_tokenizer()
        config.model = fit_to_clip(config.model, self.clip, self.tokenizer, **self.drawn_shape())
        if self.image_tokenizer is None and config.data.image_size % config.model.image_size:
            raise ValueError(f"image_size {config.model.image_size} must divide the data's "
                             f"image size {config.data.image_size}")  # fmt: skip
        self.model = build_model(self.model_class, config.model, device)
        holdout = replace(config.data, subset="holdout")
        self.eval_images, self.eval_captions = load_images(holdout, config.eval.samples)
        self.eval_text = self.tokenizer.encode(self.eval_captions).ids.to(device)
        self.eval_embed = self.image_embeddings(self.eval_images)

    def load_image_tokenizer(self) -> Any:
        """The FSQ tokenizer whose codes a latent decoder draws (None: pixels)."""
        folder = self.config.image_tokenizer
        return load_latent_tokenizer(folder, self.device) if folder else None

    def drawn_shape(self) -> dict[str, int]:
        """The side and channels of what the decoder diffuses: the tokenizer's code grid,
        or pixels at ``image_size`` (the data's when 0)."""
        c = self.config
        if self.image_tokenizer is None:
            return {"image_size": c.image_size or c.data.image_size, "image_channels": 3}
        return {"image_size": self.image_tokenizer.token_grid(c.data.image_size),
                "image_channels": len(self.image_tokenizer.config.levels)}  # fmt: skip

    def diffused(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> what the decoder diffuses: their codes, or their pixels in
        [-1, 1] at its size."""
        images = images.to(self.device)
        if self.image_tokenizer is not None:
            return self.image_tokenizer.codes(images)
        return to_model_range(self.at_decoder_size(images))

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return torch.cat([self.clip.encode_image(b) for b in images.split(256)]).float()

    def loss(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        embed: torch.Tensor,
        generator: torch.Generator | None = None,
        dropout: bool = True,
    ) -> torch.Tensor:
        """The decoder's objective for uint8 ``images`` with their captions ``[B, L]`` and
        CLIP embeddings ``[B, D]``; ``dropout``: drop conditions for guidance (training
        does, validation does not)."""
        drop = self.dropped(len(text)) if dropout else (None, None)
        return self.objective(images, text, embed, drop, generator)

    def objective(self, images: Tensor, text: Tensor, embed: Tensor, drop: Dropped,
                  generator: torch.Generator | None) -> Tensor:  # fmt: skip
        """Squared error of the prediction (the noise by default) for uint8 ``images``
        noised to random steps."""
        clean = self.diffused(images)
        noisy, t, noise = noised(clean, self.config.model.timesteps, generator)
        prediction = self.model(noisy, t, text, embed, *drop)
        c = self.config.model
        target = prediction_target(c.prediction, clean, noise, t, c.timesteps)
        return F.mse_loss(prediction.float(), target.float())

    def dropped(self, rows: int) -> Dropped:
        """Which rows ``[rows]`` bool lose their caption and which their CLIP embedding
        (the paper's classifier-free guidance dropout)."""
        drop_text = torch.rand(rows, device=self.device) < self.config.caption_dropout
        drop_image = torch.rand(rows, device=self.device) < self.config.image_dropout
        return drop_text, drop_image

    def at_decoder_size(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images at the data's size -> the decoder's output size (shrunk by area
        averaging for a smaller pixel decoder)."""
        if self.image_tokenizer is not None:
            return images
        factor = images.shape[-1] // self.config.model.image_size
        if factor == 1:
            return images
        return shrink(images, factor).round().to(torch.uint8)

    def training_loss(self, batch: Batch, position: float) -> tuple[torch.Tensor, Metrics]:
        text = self.tokenizer.encode(batch.captions).ids.to(self.device)
        loss = self.loss(batch.images, text, self.image_embeddings(batch.images))
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, step: int, out_dir: Path) -> dict[str, float]:
        generator = torch.Generator().manual_seed(0)  # the same noise at every evaluation
        size = self.config.data.batch_size
        losses = [self.loss(i, t, e, generator, dropout=False).item() * len(i)
                  for i, t, e in zip(self.eval_images.split(size), self.eval_text.split(size),
                                     self.eval_embed.split(size), strict=True)]  # fmt: skip
        metrics = {"val_loss": sum(losses) / len(self.eval_images)}
        n = min(self.config.eval.grid, len(self.eval_images))
        decoded = self.draw(self.eval_text[:n], self.eval_embed[:n], generator).cpu()
        (out_dir / "samples").mkdir(exist_ok=True)
        both = torch.cat([self.at_decoder_size(self.eval_images[:n]), decoded])
        make_grid(both, columns=n).save(out_dir / "samples" / f"decoded-{step:07d}.png")
        if self.config.data.source.startswith("shapes"):
            metrics["decoded_judge_pass"] = pass_rate(decoded, self.eval_captions)
        return metrics

    def draw(
        self, text: torch.Tensor, embed: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """uint8 images decoded from embeddings at the evaluation's settings."""
        e = self.config.eval
        return sample_images(self.model, text, embed, e.sample_steps, e.guidance_scale,
                             generator, image_tokenizer=self.image_tokenizer)  # fmt: skip

    def export(self, out_dir: Path, model: nn.Module) -> None:
        """``model``; in ``clip/``, the CLIP whose embeddings it decodes; and for a latent
        decoder, in ``image_tokenizer/``, the tokenizer whose codes it draws."""
        model.save_pretrained(out_dir)  # type: ignore[operator]
        if self.image_tokenizer is not None:
            self.image_tokenizer.save_pretrained(out_dir / IMAGE_TOKENIZER_DIR)
        self.clip.save_pretrained(out_dir / CLIP_DIR)
        self.tokenizer.save(out_dir / CLIP_DIR / "tokenizer")


# ----------------------------------------------------------------------------- tokens


@dataclass
class TokenDecoderEvalConfig(DecoderEvalConfig):
    sample_steps: int = 12  # aMUSEd samples in 12


@dataclass
class TokenDecoderTrainConfig(DecoderTrainConfig):
    """`dalle train-decoder` with a ``token-decoder-*`` preset: the decoder draws the image
    tokenizer's token grid by masked-token diffusion (``models/token_decoder.py``). The
    image tokenizer is required and may be of any kind."""

    preset: str = "token-decoder-small"
    model: TokenDecoderConfig = field(default_factory=TokenDecoderConfig)
    optim: OptimConfig = optim_defaults(
        lr=1.0e-3, final_lr=1.0e-5, warmup_steps=100, weight_decay=0.01, grad_clip=1.0
    )
    eval: TokenDecoderEvalConfig = field(default_factory=TokenDecoderEvalConfig)


class TokenDecoderTask(DecoderTask):
    model_class = TokenDecoder

    def __init__(self, config: TokenDecoderTrainConfig, device: torch.device) -> None:
        if config.image_size:
            raise ValueError(f"image_size {config.image_size} is a pixel decoder's setting: a "
                             "token decoder draws its image tokenizer's grid")  # fmt: skip
        super().__init__(config, device)

    def load_image_tokenizer(self) -> Any:
        return load_image_tokenizer(self.config.image_tokenizer, self.device)

    def drawn_shape(self) -> dict[str, int]:
        """The token grid's side and vocabulary."""
        grid = self.image_tokenizer.token_grid(self.config.data.image_size)
        return {"image_size": grid, "image_vocab_size": self.image_tokenizer.vocab_size}

    def objective(self, images: Tensor, text: Tensor, embed: Tensor, drop: Dropped,
                  generator: torch.Generator | None) -> Tensor:  # fmt: skip
        """Cross-entropy of the masked tokens of uint8 ``images``' token grids."""
        tokens = self.image_tokenizer.encode(images.to(self.device))  # [B, h, w]
        corrupted, masked = mask_tokens(tokens, self.config.model.mask_id, generator)
        logits = self.model(corrupted, text, embed, *drop)
        return masked_token_loss(logits, tokens, masked)

    def draw(
        self, text: torch.Tensor, embed: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        e = self.config.eval
        tokens = sample_tokens(self.model, text, embed, e.sample_steps, e.guidance_scale,
                               generator)  # fmt: skip
        return self.image_tokenizer.decode(tokens)


# ----------------------------------------------------------------------------- transformer


@dataclass
class TransformerDecoderEvalConfig:
    samples: int = 256  # held-out pairs for the validation loss
    grid: int = 16  # held-out images decoded from their embeddings (and judged)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(guidance_scale=3.0))


@dataclass
class TransformerDecoderTrainConfig(DecoderTrainConfig):
    """`dalle train-decoder` with a ``transformer-decoder-*`` preset: the decoder draws the
    image tokenizer's tokens one after another, as the DALL-E transformer does, from the
    CLIP image embedding and the caption (``models/transformer_decoder.py``). The image
    tokenizer is required and may be of any kind."""

    preset: str = "transformer-decoder-small"
    model: TransformerDecoderConfig = field(default_factory=TransformerDecoderConfig)
    # The DALL-E demo transformer's settings, which train this shape fastest on a CPU.
    optim: OptimConfig = optim_defaults(lr=3.0e-3, final_lr=3.0e-5, warmup_steps=100,
                                        betas=[0.9, 0.96], weight_decay=4.5e-2,
                                        grad_clip=1.0)  # fmt: skip
    eval: TransformerDecoderEvalConfig = field(default_factory=TransformerDecoderEvalConfig)


class TransformerDecoderTask(TokenDecoderTask):
    model_class = TransformerDecoder

    def drawn_shape(self) -> dict[str, int]:
        """The token grid's side and vocabulary."""
        grid = self.image_tokenizer.token_grid(self.config.data.image_size)
        return {"image_grid": grid, "image_vocab_size": self.image_tokenizer.vocab_size}

    def objective(self, images: Tensor, text: Tensor, embed: Tensor, drop: Dropped,
                  generator: torch.Generator | None) -> Tensor:  # fmt: skip
        """The DALL-E transformer's loss (1/8 caption, 7/8 image tokens, by default) given
        the embeddings; dropped captions become padding and dropped embeddings zeros."""
        tokens = self.image_tokenizer.encode(images.to(self.device)).flatten(1)  # [B, h*w]
        drop_text, drop_image = drop
        if drop_text is not None:
            text = torch.where(drop_text[:, None], torch.full_like(text, PAD_ID), text)
            embed = torch.where(drop_image[:, None], torch.zeros_like(embed), embed)
        return self.model.loss(text, tokens, image_embed=embed)["loss"]

    def draw(
        self, text: torch.Tensor, embed: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        tokens = sample_image_tokens(self.model, text, self.config.eval.sampling,
                                     generator=generator, image_embed=embed)  # fmt: skip
        grid = self.config.model.image_grid
        return self.image_tokenizer.decode(tokens.view(len(tokens), grid, grid))
