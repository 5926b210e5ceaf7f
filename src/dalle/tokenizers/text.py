"""Caption tokenizer: byte-level BPE trained with HF ``tokenizers``.

DALL-E lowercases captions and BPE-encodes them into at most 256 tokens from a 16,384
vocabulary, with BPE dropout (rate 0.1) during training. Here captions are NFKC
normalised and lowercased, split byte-level (so no caption has unknown characters), end
with an ``[EOT]`` token and are padded with ``[PAD]`` (id 0) to a fixed length. Every
setting, the fixed length included, lives in ``tokenizer.json``, so a saved tokenizer
loads back exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

log = logging.getLogger(__name__)

PAD, EOT = "[PAD]", "[EOT]"
PAD_ID, EOT_ID = 0, 1
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class TokenizerConfig:
    vocab_size: int = 16384  # the paper's; small data sets stop merging earlier
    max_length: int = 256  # tokens per caption, [EOT] included
    min_frequency: int = 2  # merges seen fewer times than this are not learned
    max_captions: int | None = 1_000_000  # captions read for training (None: all)


@dataclass
class EncodedText:
    ids: torch.Tensor  # int64 [B, max_length], PAD_ID after the caption's [EOT]
    lengths: torch.Tensor  # int64 [B], tokens before padding, [EOT] included
    truncated: int  # captions in this batch cut to max_length


class TextTokenizer:
    """Fixed-length caption encoder around a ``tokenizers.Tokenizer``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        if tokenizer.token_to_id(PAD) != PAD_ID or tokenizer.token_to_id(EOT) != EOT_ID:
            raise ValueError(f"tokenizer must map {PAD} to {PAD_ID} and {EOT} to {EOT_ID}")
        if tokenizer.truncation is None or tokenizer.padding is None:
            raise ValueError("tokenizer must have fixed-length truncation and padding enabled")
        self._tokenizer = tokenizer
        self.max_length: int = tokenizer.truncation["max_length"]
        self.encoded_total = 0
        self.truncated_total = 0

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    @classmethod
    def train(cls, captions: Iterable[str], config: TokenizerConfig) -> TextTokenizer:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=[PAD, EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(captions, trainer)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {EOT}", special_tokens=[(EOT, EOT_ID)]
        )
        # Truncation leaves room for [EOT], which the post-processor appends afterwards.
        tokenizer.enable_truncation(max_length=config.max_length)
        tokenizer.enable_padding(length=config.max_length, pad_id=PAD_ID, pad_token=PAD)
        return cls(tokenizer)

    def encode(self, captions: Sequence[str], dropout: float = 0.0) -> EncodedText:
        """Encodes a batch; ``dropout`` > 0 applies BPE dropout (training only)."""
        self._tokenizer.model.dropout = dropout if dropout > 0 else None
        try:
            encodings = self._tokenizer.encode_batch(list(captions))
        finally:
            self._tokenizer.model.dropout = None
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(len(encodings), -1)
        lengths = torch.tensor([sum(e.attention_mask) for e in encodings], dtype=torch.long)
        truncated = sum(1 for e in encodings if e.overflowing)
        self.encoded_total += len(encodings)
        if truncated:
            if self.truncated_total == 0:
                log.warning(
                    "captions longer than %d tokens are truncated (first: %r); "
                    "the run's summary gives the count",
                    self.max_length,
                    next(c for c, e in zip(captions, encodings, strict=True) if e.overflowing),
                )
            self.truncated_total += truncated
        return EncodedText(ids, lengths, truncated)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one id sequence, special tokens (padding, end of text) dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)

    def truncation_summary(self) -> str:
        return (
            f"{self.truncated_total} of {self.encoded_total} captions were truncated "
            f"to {self.max_length} tokens"
        )

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        path.write_text(self.to_str(), encoding="utf-8")
        return path

    def to_str(self) -> str:
        return self._tokenizer.to_str()

    @classmethod
    def load(cls, directory_or_file: str | Path) -> TextTokenizer:
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} at {path}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path} is not a valid tokenizer file: {err}") from None

    def describe(self) -> dict:
        merges = json.loads(self.to_str())["model"]["merges"]
        return {"vocab_size": self.vocab_size, "merges": len(merges), "max_length": self.max_length}
