"""How a DALL-E 2 decoder's sampling settings change what it draws: held-out Shapes World
scenes decoded from their own CLIP image embeddings (and captions) under several
guidance scales and step counts (and, for a token decoder, temperatures), each judged
against its caption.

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
from dalle.sampling.masked import sample_tokens
from dalle.sampling.unclip import UnCLIP

# (guidance scale, DDIM steps, with the caption)
SETTINGS = [(3.0, 25, True), (1.0, 25, True), (5.0, 25, True), (3.0, 50, True), (3.0, 25, False)]
# A token decoder: (guidance scale, unmasking steps, temperature of the token draws)
TOKEN_SETTINGS = [(3.0, 12, 1.0), (3.0, 12, 0.5), (1.0, 12, 0.5), (5.0, 12, 0.5),
                  (3.0, 32, 1.0), (3.0, 32, 0.5), (3.0, 64, 1.0), (3.0, 64, 0.5)]  # fmt: skip


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
    tokens = isinstance(pipe.decoder, TokenDecoder)
    for setting in TOKEN_SETTINGS if tokens else SETTINGS:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        if tokens:
            guidance, steps, temperature = setting
            with pipe.autocast():
                grid = sample_tokens(pipe.decoder, text, embed, steps, guidance, generator,
                                     temperature=temperature)  # fmt: skip
            drawn = pipe.image_tokenizer.decode(grid).cpu()
            name = f"guidance {guidance}, {steps} steps, temperature {temperature}"
        else:
            guidance, steps, caption = setting
            given = text if caption else pipe.no_caption(len(captions))
            drawn = pipe.draw(given, embed, steps, guidance, generator)
            name = f"guidance {guidance}, {steps} steps, caption {caption}"
        seconds = time.perf_counter() - start
        print(f"{name}: {pass_rate(drawn, captions):.1%} pass ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
