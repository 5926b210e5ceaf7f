"""Pre-tokenized data: a data set encoded once by an image tokenizer into WebDataset
shards of (token grid, caption), which the transformer trains on without decoding images
or running the encoder (dalle-mini pre-encodes its data the same way).

Each sample is ``KEY.tokens.npy`` (the grid, ``[h, w]`` integers) beside ``KEY.txt``;
``tokens.json`` beside the shards records which image tokenizer wrote them (and a hash
of its files), the grid, the vocabulary and what was skipped.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from dalle.data.datasets import (
    TOKENS_PART,
    DataConfig,
    expand_shards,
    make_loader,
    new_skip_log,
    open_source,
)

META_FILE = "tokens.json"
SHARD_PATTERN = "tokens-%06d.tar"


def write_token_shards(
    image_tokenizer: Any,
    tokenizer_hash: str,
    data: DataConfig,
    out: Path,
    shard_size: int = 10_000,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Encodes every usable sample of ``data`` into shards under ``out``; returns (and
    writes to ``tokens.json``) what was written and skipped."""
    out.mkdir(parents=True, exist_ok=True)
    config = replace(data, shuffle=False, batch_size=batch_size)
    dataset = open_source(config)
    skips = new_skip_log(dataset)
    device = next(image_tokenizer.parameters()).device
    dtype = np.int16 if image_tokenizer.vocab_size <= 2**15 else np.int32
    written, grid = 0, None
    with wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=shard_size, verbose=0) as sink:
        for batch in tqdm(make_loader(dataset, config), unit="batch", disable=not progress):
            skips.add(batch.skipped)
            if not len(batch):
                continue
            tokens = image_tokenizer.encode(batch.images.to(device)).cpu().numpy()  # [B, h, w]
            grid = tokens.shape[-1]
            for key, caption, sample_tokens in zip(batch.keys, batch.captions, tokens, strict=True):
                sink.write({"__key__": shard_key(key), "txt": caption.encode("utf-8"),
                            TOKENS_PART: _npy(sample_tokens.astype(dtype))})  # fmt: skip
                written += 1
    meta = {
        "image_tokenizer_hash": tokenizer_hash,
        "image_tokenizer_type": type(image_tokenizer).__name__,
        # Steps of encoding by search past the encoder's guess (0: none).
        "refine_steps": getattr(image_tokenizer.config, "refine_steps", 0),
        "vocab_size": image_tokenizer.vocab_size,
        "token_grid": grid,
        "image_size": data.image_size,
        "source": data.source,
        "subset": data.subset,
        "samples": written,
        "shards": len(list(out.glob("tokens-*.tar"))),
        "skipped": skips.to_json(),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def shard_key(key: str) -> str:
    """A source key as a WebDataset key: no extension, and no dots (a tar member's name
    is split into key and part at its first dot)."""
    stem = re.sub(r"\.(png|jpe?g|webp)$", "", key, flags=re.IGNORECASE)
    return stem.replace(".", "_")


def shards_pattern(out: Path) -> str:
    """The brace pattern naming every shard written to ``out``."""
    count = len(list(out.glob("tokens-*.tar")))
    if count == 1:
        return str(out / "tokens-000000.tar")
    return str(out / f"tokens-{{000000..{count - 1:06d}}}.tar")


def token_shard_meta(source: str) -> dict[str, Any] | None:
    """The ``tokens.json`` beside a source's shards, or None if it is not pre-tokenized."""
    if ".tar" not in source:
        return None
    shards = expand_shards(source)
    meta = Path(shards[0]).parent / META_FILE
    return json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else None


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
