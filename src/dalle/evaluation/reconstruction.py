"""How well an image tokenizer keeps what it sees: pixel error and how it spends codes.

On images that are mostly background (Shapes World is ~85% white, emoji are cut-outs),
the token histogram over whole images is dominated by one background code, which caps
its perplexity near a handful however many distinct codes the objects get. So code usage
is reported twice: over all tokens, and over foreground tokens only, those whose patch
holds a pixel that differs clearly from the image's background.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dalle.data.datasets import DataConfig
from dalle.data.images import foreground_mask


def reconstruction_metrics(original: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
    """MSE on [0, 1] pixels and PSNR (mean of per-image PSNR), uint8 inputs ``[B, 3, H, W]``."""
    a, b = original.float() / 255, recon.float() / 255
    per_image = ((a - b) ** 2).flatten(1).mean(dim=1)  # [B]
    psnr = (10 * torch.log10(1 / per_image.clamp_min(1e-10))).mean()
    return {"mse": float(per_image.mean()), "psnr": float(psnr)}


def code_usage(tokens: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Share of the vocabulary used and perplexity of the histogram of ``tokens``."""
    counts = torch.bincount(tokens.flatten(), minlength=vocab_size).float()
    if counts.sum() == 0:
        return {"codes_used": 0.0, "perplexity": 0.0}
    probs = counts[counts > 0] / counts.sum()
    entropy = -(probs * probs.log()).sum().item()
    return {"codes_used": float((counts > 0).float().mean()), "perplexity": math.exp(entropy)}


def foreground_tokens(images: torch.Tensor, grid: int) -> torch.Tensor:
    """Which tokens of uint8 images ``[B, 3, H, W]`` cover foreground: bool ``[B, g, g]``.

    The background is each image's median colour."""
    return F.adaptive_max_pool2d(foreground_mask(images), grid)[:, 0] > 0


def reconstruction_spread(images: torch.Tensor, recon: torch.Tensor) -> float:
    """How much reconstructions differ from one another, as a share of how much their
    images do (mean per-pixel std across the batch; 1.0 when the images are all alike).
    Near 0, the decoder draws one image whatever the tokens say."""
    spread = [x.float().std(dim=0).mean() if len(x) > 1 else torch.tensor(0.0)
              for x in (images, recon)]  # fmt: skip
    return float(spread[1] / spread[0]) if spread[0] > 0 else 1.0


def tokenizer_metrics(
    images: torch.Tensor, recon: torch.Tensor, tokens: torch.Tensor, vocab_size: int
) -> dict[str, float]:
    """Reconstruction error, and code usage over all tokens and over foreground tokens."""
    metrics = reconstruction_metrics(images, recon)
    metrics["reconstruction_spread"] = reconstruction_spread(images, recon)
    metrics.update(code_usage(tokens, vocab_size))
    foreground = code_usage(tokens[foreground_tokens(images, tokens.shape[-1])], vocab_size)
    metrics.update({f"foreground_{k}": v for k, v in foreground.items()})
    return metrics


# A tokenizer whose foreground tokens use less than this fraction of its codes has
# collapsed: a few codes stand for every object (the paper dVAE's failure on mostly-white
# data; healthy Shapes World tokenizers here use 7-90%).
COLLAPSE_FRACTION = 0.02
# Nor may one code take nearly all of them while a few stray uses keep the fraction up: a
# dVAE whose encoder went uniform used 16 of 512 codes at least once, with a foreground
# perplexity of 1.03 (BENCHMARKS.md).
COLLAPSE_PERPLEXITY = 2.0
# Nor may the decoder draw one image for every set of tokens: a dVAE whose decoder's last
# ReLU had died decoded every held-out scene to the same background (reconstructions
# spread 0% as much as the scenes) while its encoder used 37% of the codes (BENCHMARKS.md).
COLLAPSE_SPREAD = 0.05


def collapse_message(metrics: dict[str, float], vocab_size: int) -> str | None:
    """A one-line warning when ``tokenizer_metrics`` show collapsed codes or a decoder that
    ignores them, else None."""
    spread = metrics.get("reconstruction_spread", 1.0)
    if spread < COLLAPSE_SPREAD:
        return (f"image tokenizer collapsed: its decoder ignores the tokens (reconstructions "
                f"differ {spread:.1%} as much as the images do; at least "
                f"{COLLAPSE_SPREAD:.0%} expected)")  # fmt: skip
    used, perplexity = metrics["foreground_codes_used"], metrics["foreground_perplexity"]
    if used >= COLLAPSE_FRACTION and perplexity >= COLLAPSE_PERPLEXITY:
        return None
    return (f"image tokenizer collapsed: its foreground tokens use {round(used * vocab_size)} "
            f"of {vocab_size} codes ({used:.1%}; at least {COLLAPSE_FRACTION:.0%} expected), "
            f"as if {perplexity:.2f} (perplexity; at least {COLLAPSE_PERPLEXITY:g} "
            f"expected)")  # fmt: skip


@torch.no_grad()
def reconstruct(
    tokenizer, images: torch.Tensor, batch_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``images`` through an image tokenizer's tokens and back, in batches: the
    reconstructions (uint8) and the tokens, on the CPU."""
    device = next(tokenizer.parameters()).device
    recons, tokens = [], []
    for chunk in images.split(batch_size):
        t = tokenizer.encode(chunk.to(device))
        tokens.append(t.cpu())
        recons.append(tokenizer.decode(t).cpu())
    return torch.cat(recons), torch.cat(tokens)


def reconstruct_to_folder(
    tokenizer, data: DataConfig, count: int, out_dir: Path, batch_size: int = 64
) -> dict[str, float]:
    """Encodes and decodes the first ``count`` usable images of ``data``, writing each
    reconstruction as ``NNNN.png`` beside ``NNNN.txt`` (its source caption) so that any
    judge can score it. Returns the reconstruction metrics over them."""
    from dalle.data.datasets import load_images
    from dalle.sampling.generate import write_images

    images, captions = load_images(data, count)
    recon, codes = reconstruct(tokenizer, images, batch_size)
    write_images(recon, captions, out_dir)
    return {"images": len(recon), **tokenizer_metrics(images, recon, codes, tokenizer.vocab_size)}
