"""How a DALL-E 2 decoder's sampling settings change what it draws: held-out Shapes World
scenes decoded from their own CLIP image embeddings (and captions) under several
guidance scales, step counts and temperatures of token draws, with and without the
caption, each judged against its caption.

    python benchmarks/unclip_decode_settings.py DECODER_DIR [--count 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dalle.data.datasets import DataConfig, load_images
from dalle.evaluation.shapes_judge import pass_rate
from dalle.models.token_decoder import TokenDecoder
from dalle.models.transformer_decoder import TransformerDecoder
from dalle.sampling.unclip import UnCLIP

# (guidance scale, DDIM steps, temperature of token draws, with the caption)
SETTINGS = [(3.0, 25, 1.0, True), (1.0, 25, 1.0, True), (5.0, 25, 1.0, True),
            (3.0, 50, 1.0, True), (3.0, 25, 1.0, False)]  # fmt: skip
# A token decoder: unmasking steps and the temperature of its draws.
TOKEN_SETTINGS = [(3.0, 12, 1.0, True), (3.0, 12, 0.5, True), (1.0, 12, 0.5, True),
                  (5.0, 12, 0.5, True), (3.0, 32, 1.0, True), (3.0, 32, 0.5, True),
                  (3.0, 64, 1.0, True), (3.0, 64, 0.5, True)]  # fmt: skip
# A transformer decoder draws one token a step: guidance and temperature, with and
# without the caption (variations have none).
TRANSFORMER_SETTINGS = [(3.0, 0, 1.0, True), (1.0, 0, 1.0, True), (2.0, 0, 0.5, True),
                        (3.0, 0, 0.5, True), (5.0, 0, 1.0, True), (3.0, 0, 1.0, False),
                        (1.0, 0, 1.0, False), (3.0, 0, 0.5, False), (1.5, 0, 0.5, True),
                        (1.0, 0, 0.5, True), (2.0, 0, 0.3, True), (1.5, 0, 0.3, True),
                        (2.0, 0, 0.7, True), (3.0, 0, 0.3, True)]  # fmt: skip


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
    settings = {TokenDecoder: TOKEN_SETTINGS, TransformerDecoder: TRANSFORMER_SETTINGS}
    for guidance, steps, temperature, caption in settings.get(type(pipe.decoder), SETTINGS):
        start = time.perf_counter()
        pipe.decoder_temperature = temperature
        given = text if caption else pipe.no_caption(len(captions))
        drawn = pipe.draw(given, embed, steps, guidance, torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        name = f"guidance {guidance}, {steps} steps, temperature {temperature}, caption {caption}"
        print(f"{name}: {pass_rate(drawn, captions):.1%} pass ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
