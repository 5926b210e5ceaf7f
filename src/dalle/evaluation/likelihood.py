"""How likely a trained transformer finds a data set: bits per dimension.

DALL-E is a density model over image tokens: ``log p(tokens | caption)`` is exact. Divided
by the image's dimensions (``3 * H * W``) it is the figure VQ-VAE-style papers report for
their priors. It leaves out the image tokenizer's own reconstruction term, so it is not a
likelihood of the pixels; compare it only between models that share an image tokenizer.
Two references come with it: the same images scored with an empty caption (what the
caption tells the model, in bits) and a uniform guess over the vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import replace

from dalle.data.datasets import DataConfig, make_loader, new_skip_log, open_source
from dalle.sampling.generate import TextToImage


def dataset_bits_per_dimension(
    pipe: TextToImage, data: DataConfig, count: int | None = None, batch_size: int = 32
) -> dict:
    """Mean bits per dimension and per image token over (the first ``count``) usable
    images of ``data``, with and without their captions; unreadable samples are skipped
    and counted. Raises ValueError when no image is usable."""
    config = replace(data, shuffle=False, batch_size=batch_size)
    dataset = open_source(config)
    skip_log = new_skip_log(dataset)
    conditional, unconditional, images = 0.0, 0.0, 0
    for batch in make_loader(dataset, config):
        skip_log.add(batch.skipped)
        if not len(batch):
            continue
        if batch.tokens is not None:
            raise ValueError(f"{data.source} holds image tokens; score the images themselves")
        take = len(batch) if count is None else min(len(batch), count - images)
        pictures, captions = batch.images[:take], batch.captions[:take]
        conditional += float(pipe.log_likelihood(pictures, captions).sum())
        unconditional += float(pipe.log_likelihood(pictures, captions, unconditional=True).sum())
        images += take
        if count is not None and images >= count:
            break
    if images == 0:
        raise ValueError(f"no usable images in the {data.subset} subset of {data.source}")
    tokens = pipe.model.config.image_tokens
    dimensions = 3 * data.image_size * data.image_size
    bits = lambda nats, per: -nats / (images * per * math.log(2))  # noqa: E731
    return {
        "source": data.source, "subset": data.subset, "images": images,
        "skipped": skip_log.total,
        "bits_per_dim": bits(conditional, dimensions),
        "bits_per_token": bits(conditional, tokens),
        "bits_per_dim_without_caption": bits(unconditional, dimensions),
        "bits_per_dim_uniform": tokens * math.log2(pipe.model.config.image_vocab_size) / dimensions,
    }  # fmt: skip
