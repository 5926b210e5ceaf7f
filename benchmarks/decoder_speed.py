"""Training speed of DALL-E 2's decoder U-Net on this machine, by shape.

One AdamW step at a time on random 64x64 images (batch 32), after one warm-up step,
bf16 autocast unless ``--fp32``; prints images per second for each variant of the
``decoder-small`` preset.

    python benchmarks/decoder_speed.py [--fp32]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from dalle.models.decoder import DECODER_PRESETS, ImageDecoder

WIDE = dict(channels=[32, 64, 96, 128], norm_groups=16, head_dim=32)
VARIANTS = {
    "32,64,96,128 attention at 32,16,8": dict(WIDE, attention=[False, True, True, True]),
    "32,64,96,128 attention at 16,8": dict(WIDE, attention=[False, False, True, True]),
    "32,64,96,128 attention at 8": dict(WIDE, attention=[False, False, False, True]),
    "16,32,64,128 attention at 16,8": dict(attention=[False, False, True, True]),
    "16,32,64,128 attention at 8 (decoder-small)": {},
    "16,32,64,96 attention at 8": dict(channels=[16, 32, 64, 96]),
}


def images_per_second(model: ImageDecoder, bf16: bool, batch: int = 32, steps: int = 3) -> float:
    c = model.config
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.randn(batch, c.image_channels, c.image_size, c.image_size)
    t = torch.randint(0, 1000, (batch,))
    text, embed = (
        torch.randint(2, c.text_vocab_size, (batch, c.text_len)),
        torch.randn(batch, c.embed_dim),
    )
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, t, text, embed).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", action="store_true")
    args = parser.parse_args()
    base = replace(DECODER_PRESETS["decoder-small"], text_vocab_size=364, text_len=24,
                   embed_dim=64, image_size=64)  # fmt: skip
    for name, change in VARIANTS.items():
        torch.manual_seed(0)
        model = ImageDecoder(replace(base, **change))
        speed = images_per_second(model, bf16=not args.fp32)
        print(f"{name}: {speed:.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
