"""The discrete VAE's objective: an evidence lower bound with a weighted KL term.

The paper (Ramesh et al. 2021, §2.1 and App. A) maximises
``E_q[log p(x | z)] - beta * KL(q(z | x) || uniform)`` with a Gumbel-softmax relaxation of
``q``, a logit-Laplace likelihood on mapped pixels, and the total divided by the number
of sub-pixels (256 * 256 * 3): with 8x8-pixel latents, the KL weight per sub-pixel is
beta / 192. Here that per-sub-pixel weight is kept at beta / 192 for any latent size, so
a 4x4-pixel grid does not weigh the KL 4x more heavily than the paper does: each latent's
KL counts ``beta * (pixels per latent / 64)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def logit_laplace_nll(
    x: torch.Tensor, stats: torch.Tensor, min_scale: float = 0.0, max_scale: float = 0.0
) -> torch.Tensor:
    """Negative log density of mapped pixels under a logit-Laplace, per sub-pixel.

    Args:
        x: mapped pixels in (0, 1), ``[B, C, H, W]`` (see ``map_pixels``).
        stats: decoder output ``[B, 2C, H, W]``: location ``mu`` (in logit space), then
            ``log b``.
        min_scale: a floor under the scale ``b`` (0: none, the paper). On flat-colour
            images the density of an exactly repeated value is unbounded as ``b -> 0``:
            the background's scale shrinks without end and its gradients, ``1 / b``, drown
            those of the object pixels. The location, and so the reconstruction, is not
            limited by the floor.
        max_scale: a ceiling over ``b`` (0: none, the paper). A decoder that cannot yet
            place an edge can widen the scale there and pay ``log b + |error| / b``, about
            ``log |error| + 1``, for a pixel it gets wrong; the location's gradient,
            ``1 / b``, then fades. The ceiling keeps that gradient from fading.

    The density on (0, 1) is ``exp(-|logit(x) - mu| / b) / (2 b x (1 - x))``.
    Returns ``[B, C, H, W]``.
    """
    channels = x.shape[1]
    mu, log_b = stats[:, :channels].float(), stats[:, channels:].float()
    if min_scale > 0 or max_scale > 0:
        log_b = log_b.clamp(min=math.log(min_scale) if min_scale > 0 else None,
                            max=math.log(max_scale) if max_scale > 0 else None)  # fmt: skip
    x = x.float()
    logit_x = torch.log(x) - torch.log1p(-x)
    return (
        math.log(2.0)
        + log_b
        + torch.log(x)
        + torch.log1p(-x)
        + (logit_x - mu).abs() * torch.exp(-log_b)
    )


def gaussian_nll(x: torch.Tensor, stats: torch.Tensor, std: float) -> torch.Tensor:
    """Negative log density of mapped pixels under a Gaussian of fixed ``std``, per sub-pixel.

    The mean is ``sigmoid(mu)`` with ``mu`` the same decoder channels as the logit-Laplace
    location, so a model trained under either likelihood decodes the same way; the
    log-scale channels go unused. ``x``: ``[B, C, H, W]`` in (0, 1); returns the same shape.
    """
    channels = x.shape[1]
    mean = torch.sigmoid(stats[:, :channels].float())
    return (x.float() - mean) ** 2 / (2 * std**2) + math.log(std * math.sqrt(2 * math.pi))


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || uniform) per latent position, in nats.

    ``logits``: ``[B, V, h, w]``; returns ``[B, h, w]``.
    """
    log_q = F.log_softmax(logits.float(), dim=1)
    vocab = logits.shape[1]
    return (log_q.exp() * log_q).sum(dim=1) + math.log(vocab)


def usage_kl(logits: torch.Tensor) -> torch.Tensor:
    """KL(mean posterior || uniform) in nats: the code distribution of a whole batch (every
    image and position of ``logits`` ``[B, V, h, w]``) against uniform. It is 0 when the
    batch uses all codes equally, however confident each position is; log V when every
    position takes one code."""
    mean = F.softmax(logits.float(), dim=1).mean(dim=(0, 2, 3))  # [V]
    return (mean * mean.clamp_min(1e-12).log()).sum() + math.log(logits.shape[1])


def gumbel_softmax(
    logits: torch.Tensor, temperature: float, dim: int = 1, hard: bool = False
) -> torch.Tensor:
    """A relaxed one-hot sample along ``dim`` (Jang et al.; Maddison et al.).

    With ``hard`` the forward value is the exact one-hot of the sample while the gradient
    is the relaxed one's (straight-through), so the decoder trains on the same inputs it
    gets from ``encode`` at inference.

    Not ``F.gumbel_softmax``: it draws its noise with ``Tensor.exponential_``, which on a
    CPU took a quarter of a 16x16 dVAE's training step (21 ms for 32 x 512 x 8 x 8 draws
    on this 2-core machine); ``-log(-log(U))`` from ``torch.rand`` is the same
    distribution in a quarter of the time (BENCHMARKS.md).
    """
    logits = logits.float()
    uniform = torch.rand_like(logits).clamp_min(torch.finfo(logits.dtype).tiny)  # (0, 1)
    gumbel = -torch.log(-torch.log(uniform))
    soft = F.softmax((logits + gumbel) / temperature, dim=dim)
    if not hard:
        return soft
    one_hot = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return one_hot - soft.detach() + soft  # straight-through: exact forward, soft gradient


# The paper's 8x8-pixel latents, at which its beta was set.
PAPER_PIXELS_PER_LATENT = 64


@dataclass
class DVAELoss:
    loss: torch.Tensor  # the scalar that is minimised
    nll: torch.Tensor  # mean negative log-likelihood per sub-pixel
    kl: torch.Tensor  # mean KL per latent position, nats
    usage_kl: torch.Tensor  # KL of the batch's mean posterior to uniform, nats


def dvae_loss(
    x: torch.Tensor,
    stats: torch.Tensor,
    logits: torch.Tensor,
    kl_weight: float,
    likelihood: str = "logit_laplace",
    pixel_std: float = 0.07,
    min_scale: float = 0.0,
    usage_weight: float = 0.0,
    max_scale: float = 0.0,
) -> DVAELoss:
    """The negative ELB, normalised by sub-pixel count as in the paper.

    ``loss = (sum NLL + kl_weight * (P / 64) * sum KL) / (C H W)``, averaged over the
    batch, with ``P`` image pixels per latent (64 at the paper's 8x downsampling).
    ``likelihood`` is the paper's ``"logit_laplace"``, or ``"gaussian"`` with a fixed
    ``pixel_std`` (on mapped pixels); ``min_scale`` floors the logit-Laplace's scale and
    ``max_scale`` caps it.
    ``usage_weight`` adds, weighted per latent like the KL, the batch's :func:`usage_kl`
    at every latent position: it keeps all codes in use while leaving each position free
    to be confident (not in the paper).
    """
    batch, channels, height, width = x.shape
    if likelihood == "logit_laplace":
        nll = logit_laplace_nll(x, stats, min_scale, max_scale)  # [B, C, H, W]
    elif likelihood == "gaussian":
        nll = gaussian_nll(x, stats, pixel_std)
    else:
        raise ValueError(f"likelihood must be logit_laplace or gaussian, not {likelihood!r}")
    kl = kl_to_uniform(logits)  # [B, h, w]
    subpixels = channels * height * width
    pixels_per_latent = height * width / (logits.shape[-2] * logits.shape[-1])
    usage = usage_kl(logits)
    rate = kl_weight * kl.sum() + usage_weight * usage * kl.numel()
    loss = (nll.sum() + pixels_per_latent / PAPER_PIXELS_PER_LATENT * rate) / (batch * subpixels)
    return DVAELoss(loss=loss, nll=nll.mean(), kl=kl.mean(), usage_kl=usage)
