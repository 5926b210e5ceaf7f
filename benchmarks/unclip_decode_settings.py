"""How a DALL-E 2 decoder's sampling settings change what it draws: 64 held-out Shapes
World scenes decoded from their own CLIP image embeddings (and captions) under several
guidance scales and step counts, each judged against its caption.

    python benchmarks/unclip_decode_settings.py DECODER_DIR [--count 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dalle.data.datasets import DataConfig, load_images
from dalle.evaluation.shapes_judge import pass_rate
from dalle.sampling.unclip import UnCLIP

# (guidance scale, DDIM steps, with the caption)
SETTINGS = [(3.0, 25, True), (1.0, 25, True), (5.0, 25, True), (3.0, 50, True), (3.0, 25, False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("decoder", type=Path)
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    pipe = UnCLIP.from_pretrained(args.decoder, precision="bf16")
    data = DataConfig(source="shapes", image_size=pipe.image_size, subset="holdout")
    images, captions = load_images(data, args.count)
    embed = pipe.encode_image(images)
    text, _ = pipe.encode_text(captions)
    for guidance, steps, caption in SETTINGS:
        start = time.perf_counter()
        given = text if caption else pipe.no_caption(len(captions))
        drawn = pipe.draw(given, embed, steps, guidance, torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        print(f"guidance {guidance}, {steps} steps, caption {caption}: "
              f"{pass_rate(drawn, captions):.1%} pass ({seconds:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
