"""What the server's worker needs from a text-to-image system, and DALL-E's.

The job queue knows nothing of a particular model: it asks a :class:`Backend` to draw a
batch of images (one generator per image) and to score images against prompts. DALL-E 2
will be a second backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from dalle.sampling.generate import TextToImage
from dalle.sampling.sampler import SamplingConfig
from dalle.sampling.unclip import UnCLIP

OnStep = Callable[[int], None]  # called with the step just finished


class Backend(Protocol):
    """A loaded pipeline, owned by the server's one worker thread."""

    name: str  # the request's ``pipeline``
    steps_per_image: int  # progress units of one image (tokens, or diffusion steps)
    image_size: int
    defaults: SamplingConfig  # the model folder's recommended settings
    can_score: bool
    settings: tuple[
        str, ...
    ]  # the SamplingConfig fields it uses; a request naming another is refused

    def prompt_tokens(self, prompt: str) -> int: ...

    @property
    def max_prompt_tokens(self) -> int: ...

    def draw(self, prompts: list[str], sampling: SamplingConfig,
             generators: list[torch.Generator], on_step: OnStep) -> torch.Tensor:  # fmt: skip
        """uint8 images ``[len(prompts), 3, H, W]``, image ``i`` drawn from ``generators[i]``
        only; ``on_step(j)`` after step ``j`` of the batch."""
        ...

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``[N]``, higher is better (cosine similarity for a CLIP)."""
        ...

    def describe(self) -> dict[str, Any]: ...


class _PipelineBackend:
    """What both backends read from their pipeline (``self.pipe``): caption limits, image
    size, and the common part of ``describe``."""

    pipe: Any
    model_dir: Path
    name: str
    defaults: SamplingConfig

    @property
    def max_prompt_tokens(self) -> int:
        return self.pipe.tokenizer.max_length - 1  # room for [EOT]

    def prompt_tokens(self, prompt: str) -> int:
        return self.pipe.tokenizer.token_count(prompt)

    @property
    def image_size(self) -> int:
        return self.pipe.image_size

    def describe(self) -> dict[str, Any]:
        common = {"id": self.model_dir.name, "pipeline": self.name, "image_size": self.image_size,
                  "max_prompt_tokens": self.max_prompt_tokens}  # fmt: skip
        return common | self.details()

    def details(self) -> dict[str, Any]:
        """The backend's own entries of ``describe``."""
        raise NotImplementedError


@dataclass
class DalleBackend(_PipelineBackend):
    pipe: TextToImage
    model_dir: Path
    name: str = "dalle"
    settings: tuple[str, ...] = ("temperature", "top_k", "top_p", "guidance_scale")

    @classmethod
    def load(cls, model_dir: Path, clip_dir: Path | None, device: torch.device) -> DalleBackend:
        pipe = TextToImage.from_pretrained(model_dir, device, reranker=clip_dir)
        return cls(pipe, model_dir)

    @property
    def steps_per_image(self) -> int:
        return self.pipe.model.config.image_tokens

    @property
    def defaults(self) -> SamplingConfig:
        return self.pipe.defaults

    @property
    def can_score(self) -> bool:
        return self.pipe.scorer is not None

    def draw(self, prompts: list[str], sampling: SamplingConfig,
             generators: list[torch.Generator], on_step: OnStep) -> torch.Tensor:  # fmt: skip
        return self.pipe.generate(prompts, sampling, generators, batch_size=len(prompts),
                                  on_token=on_step)  # fmt: skip

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if self.pipe.scorer is None:
            raise ValueError("this server has no CLIP to score with (start it with --clip)")
        return self.pipe.scorer(images, prompts)

    def details(self) -> dict[str, Any]:
        return {"image_tokens": self.pipe.model.config.image_tokens,
                "rerank": self.can_score, "defaults": asdict(self.defaults)}  # fmt: skip


@dataclass
class UnCLIPBackend(_PipelineBackend):
    """DALL-E 2: the prior, then the decoder; ``guidance_scale`` is the decoder's (the
    prior is not guided, as the paper found guiding it hurt). Progress counts the prior's,
    the decoder's and (with an upsampler) the upsampler's DDIM steps."""

    pipe: UnCLIP
    model_dir: Path  # the decoder's folder
    prior_steps: int = 32
    decoder_steps: int = 25
    name: str = "unclip"
    settings: tuple[str, ...] = ("guidance_scale",)
    can_score: bool = True  # it has its own CLIP

    @classmethod
    def load(cls, decoder_dir: Path, prior_dir: Path, device: torch.device,
             upsampler_dir: Path | None = None) -> UnCLIPBackend:  # fmt: skip
        # fp32: under bf16 a batch's rounding may depend on its size, and an image must
        # not depend on what shared its batch.
        pipe = UnCLIP.from_pretrained(decoder_dir, prior_dir, device, "fp32", upsampler_dir)
        return cls(pipe, decoder_dir)

    @property
    def steps_per_image(self) -> int:
        upsampling = 0 if self.pipe.upsampler is None else self.pipe.upsampler_steps
        return self.prior_steps + self.decoder_steps + upsampling

    @property
    def image_size(self) -> int:
        return self.pipe.output_size  # the upsampler's, when there is one

    @property
    def defaults(self) -> SamplingConfig:
        return SamplingConfig(guidance_scale=3.0)

    def draw(self, prompts: list[str], sampling: SamplingConfig,
             generators: list[torch.Generator], on_step: OnStep) -> torch.Tensor:  # fmt: skip
        out = self.pipe(prompts, 1, decoder_guidance_scale=sampling.guidance_scale,
                        prior_num_inference_steps=self.prior_steps,
                        decoder_num_inference_steps=self.decoder_steps, generator=generators,
                        batch_size=len(prompts), on_step=on_step)  # fmt: skip
        return out.images[:, 0]

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        _, text_embed = self.pipe.encode_text(prompts)
        return (self.pipe.encode_image(images) * text_embed).sum(-1).cpu()

    def details(self) -> dict[str, Any]:
        return {"steps_per_image": self.steps_per_image, "rerank": True,
                "defaults": {"guidance_scale": self.defaults.guidance_scale}}  # fmt: skip
