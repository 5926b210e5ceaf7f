"""What a transformer decoder reads from each of its conditions: its held-out loss on
Shapes World scenes (the holdout subset, never trained on) given the caption and the
image's CLIP embedding, either one, neither (padding and the zero embedding, the dropped
ones), or the caption's CLIP text embedding in place of the image's.

    python benchmarks/decoder_conditions.py DECODER_DIR [--count 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dalle.data.datasets import DataConfig, load_images
from dalle.models.transformer_decoder import TransformerDecoder
from dalle.sampling.unclip import UnCLIP
from dalle.tokenizers.text import PAD_ID


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("decoder", type=Path, help="a transformer decoder's folder")
    parser.add_argument("--count", type=int, default=256)
    args = parser.parse_args()
    pipe = UnCLIP.from_pretrained(args.decoder)
    if not isinstance(pipe.decoder, TransformerDecoder):
        raise SystemExit(f"{args.decoder} holds no transformer decoder")
    data = DataConfig(source="shapes", image_size=pipe.image_size, subset="holdout")
    images, captions = load_images(data, args.count)
    embed = pipe.encode_image(images)
    text, text_embed = pipe.encode_text(captions)
    tokens = pipe.image_tokenizer.encode(images.to(pipe.device)).flatten(1)
    pad, zero = torch.full_like(text, PAD_ID), torch.zeros_like(embed)
    conditions = {"caption + image embedding": (text, embed), "caption alone": (text, zero),
                  "image embedding alone": (pad, embed), "neither": (pad, zero),
                  "caption's text embedding alone": (pad, text_embed)}  # fmt: skip
    with torch.no_grad():
        for name, (t, e) in conditions.items():
            out = pipe.decoder.loss(t, tokens, image_embed=e)
            print(f"{name}: image loss {out['image_loss']:.3f}, caption loss "
                  f"{out['text_loss']:.3f} nats per token")  # fmt: skip


if __name__ == "__main__":
    main()
