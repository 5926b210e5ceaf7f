"""Noise schedules and samplers for DALL-E 2's diffusion stages, from ``diffusers``.

Every stage trains on the cosine schedule (Nichol & Dhariwal 2021; diffusers'
``squaredcos_cap_v2``) over ``timesteps`` steps and samples with DDIM on a strided
subset of them, starting from the last step ("trailing" spacing). The models here
predict the clean sample (x0), as the paper's prior does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dalle.models.decoder import ImageDecoder
from dalle.models.fsq import FSQTokenizer
from dalle.models.prior import DiffusionPrior
from dalle.models.upsampler import Upsampler
from dalle.sampling.sampler import Generators

if TYPE_CHECKING:  # diffusers takes seconds to import: only where a schedule is made
    from diffusers import DDIMScheduler, DDPMScheduler


@functools.cache
def training_schedule(timesteps: int, prediction: str = "sample") -> DDPMScheduler:
    """The forward (noising) process: ``add_noise(x0, noise, t)`` gives x_t.
    ``prediction``: what the model predicts, ``sample`` (x0) or ``epsilon`` (the noise).
    Made once per setting: every training step noises with it."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type=prediction, clip_sample=False)  # fmt: skip


def sampling_schedule(
    timesteps: int, steps: int, prediction: str = "sample", clip_sample: bool = False
) -> DDIMScheduler:
    """DDIM over ``steps`` of the ``timesteps`` training steps, the last one first;
    ``clip_sample`` keeps each step's x0 estimate in [-1, 1] (for images)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=timesteps, beta_schedule="squaredcos_cap_v2",
                              prediction_type=prediction, clip_sample=clip_sample,
                              timestep_spacing="trailing", set_alpha_to_one=True)  # fmt: skip
    scheduler.set_timesteps(min(steps, timesteps))
    return scheduler


def noised(
    clean: torch.Tensor, timesteps: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, t, noise)``: each row of ``clean`` noised to a uniformly drawn step ``t``
    ``[B]`` with Gaussian ``noise`` (drawn on the CPU, so the same on any device)."""
    schedule = training_schedule(timesteps)
    t = torch.randint(0, timesteps, (len(clean),), generator=generator).to(clean.device)
    noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
    return schedule.add_noise(clean, noise, t), t, noise


def prediction_target(
    prediction: str, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, timesteps: int
) -> torch.Tensor:
    """What a model trained to predict ``prediction`` should output for ``clean`` noised
    with ``noise`` to steps ``t``: x0, the noise, or v = sqrt(a) noise - sqrt(1 - a) x0."""
    if prediction == "sample":
        return clean
    if prediction == "epsilon":
        return noise
    return training_schedule(timesteps, prediction).get_velocity(clean, noise, t)


def guided(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on predictions: ``u + scale * (c - u)``; 1 is none."""
    return unconditional + scale * (conditional - unconditional)


def guided_prediction(
    decoder: Callable[..., torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    text: torch.Tensor,
    image_embed: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``decoder(*inputs, text, image_embed)`` in float32, under classifier-free guidance:
    at ``scale`` 1 the conditional prediction alone; otherwise every row twice in one
    batch ``[2B, ...]``, once with both conditions and once with neither (the caption and
    the CLIP embedding dropped together), mixed by :func:`guided`."""
    if scale == 1.0:
        return decoder(*inputs, text, image_embed).float()
    rows = len(text)
    drop = torch.arange(2 * rows, device=text.device) >= rows  # [2B]: the second half
    twice = [torch.cat([a, a]) for a in (*inputs, text, image_embed)]
    both = decoder(*twice, drop_text=drop, drop_image=drop).float()
    return guided(both[:rows], both[rows:], scale)


def _draw(shape: tuple[int, ...], generator: Generators) -> torch.Tensor:
    """Gaussian noise of ``shape`` on the CPU: from one generator, or row ``i`` from
    ``generator[i]`` (so a row does not depend on the rows beside it)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for {shape[0]} rows")
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])


@torch.no_grad()
def denoise(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    timesteps: int,
    steps: int,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    eta: float = 0.0,
    prediction: str = "sample",
    clip_sample: bool = False,
    noise: torch.Tensor | None = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Runs DDIM from ``noise`` (default: drawn, of ``shape``); ``predict(x_t, t [B])``
    gives what the model predicts (``prediction``). ``eta`` 0 is deterministic given
    the starting noise; 1 is as stochastic as DDPM. ``generator``: one, or one per row
    (every draw of a row then comes from its own). ``on_step(i)`` after step ``i``."""
    scheduler = sampling_schedule(timesteps, steps, prediction, clip_sample)
    x = (_draw(shape, generator) if noise is None else noise).to(device)
    per_row = not (generator is None or isinstance(generator, torch.Generator))
    for i, t in enumerate(scheduler.timesteps):
        output = predict(x, torch.full((shape[0],), int(t), device=device, dtype=torch.long))
        extra = (
            {"variance_noise": _draw(shape, generator).to(device)} if per_row and eta > 0 else {}
        )
        x = scheduler.step(output, t, x, eta=eta, generator=None if per_row else generator,
                           **extra).prev_sample  # fmt: skip
        if on_step is not None:
            on_step(i)
    return x


@torch.no_grad()
def sample_image_embeddings(
    prior: DiffusionPrior, text: torch.Tensor, text_embed: torch.Tensor, steps: int = 64,
    guidance_scale: float = 1.0, candidates: int = 2, generator: Generators = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:  # fmt: skip
    """Unit-norm CLIP image embeddings ``[B, D]`` for captions ``text`` ``[B, L]`` with
    CLIP text embeddings ``text_embed`` ``[B, D]``.

    Draws ``candidates`` embeddings per caption and keeps the one closest to its text
    embedding (the paper draws 2). The paper found guiding the prior hurt: 1 (none) is
    the default.
    """
    rows, dim = len(text) * candidates, prior.config.embed_dim
    text_k, embed_k = (
        text.repeat_interleave(candidates, 0),
        text_embed.repeat_interleave(candidates, 0),
    )

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance_scale == 1.0:
            return prior(x, t, text_k, embed_k)
        drop = torch.arange(2 * rows, device=x.device) >= rows
        both = prior(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text_k, text_k]),
                     torch.cat([embed_k, embed_k]), drop_text=drop)  # fmt: skip
        return guided(both[:rows], both[rows:], guidance_scale)

    device = text.device
    if not (generator is None or isinstance(generator, torch.Generator)):
        generator = [g for g in generator for _ in range(candidates)]  # a row's candidates
    standardised = denoise(predict, (rows, dim), prior.config.timesteps, steps, generator, device,
                           on_step=on_step)  # fmt: skip
    embeddings = F.normalize(prior.unstandardise(standardised), dim=-1).view(
        len(text), candidates, dim
    )
    closeness = (embeddings * text_embed[:, None]).sum(-1)  # [B, candidates]
    return embeddings[torch.arange(len(text), device=device), closeness.argmax(dim=1)]


@torch.no_grad()
def sample_images(decoder: ImageDecoder, text: torch.Tensor, image_embed: torch.Tensor,
                  steps: int = 50, guidance_scale: float = 3.0, generator: Generators = None,
                  eta: float = 0.0, noise: torch.Tensor | None = None,
                  on_step: Callable[[int], None] | None = None,
                  image_tokenizer: FSQTokenizer | None = None) -> torch.Tensor:  # fmt: skip
    """uint8 images ``[B, 3, S, S]`` decoded from unit-norm CLIP image embeddings ``[B, D]``
    and captions ``[B, L]``. Guidance mixes the prediction with both conditions and the
    one with neither; ``eta`` > 0 samples stochastically (variations); ``noise`` fixes
    the starting point (interpolation). A latent decoder draws codes, which its
    ``image_tokenizer`` turns into pixels."""

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_prediction(decoder, (x, t), text, image_embed, guidance_scale)

    c = decoder.config
    shape = (len(text), c.image_channels, c.image_size, c.image_size)
    images = denoise(predict, shape, c.timesteps, steps, generator, text.device, eta,
                     c.prediction, clip_sample=True, noise=noise, on_step=on_step)  # fmt: skip
    if image_tokenizer is not None:
        return image_tokenizer.decode_codes(images)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def upsample_images(
    upsampler: Upsampler,
    low: torch.Tensor,
    steps: int = 50,
    generator: Generators = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """uint8 images ``[B, 3, S, S]`` from low-resolution ones ``low`` (in [-1, 1],
    ``[B, 3, S / scale, S / scale]``), by DDIM from fresh noise."""
    c = upsampler.config
    size = low.shape[-1] * c.scale
    images = denoise(lambda x, t: upsampler(x, t, low), (len(low), 3, size, size), c.timesteps,
                     steps, generator, low.device, prediction=c.prediction, clip_sample=True,
                     on_step=on_step)  # fmt: skip
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [-1, 1], as the decoder diffuses them."""
    return images.float() / 127.5 - 1
