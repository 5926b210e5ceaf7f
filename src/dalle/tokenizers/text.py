"""Caption tokenizer: byte-level BPE trained with HF ``tokenizers``.

DALL-E lowercases captions and BPE-encodes them into at most 256 tokens from a 16,384
vocabulary, with BPE dropout (rate 0.1) during training. Here captions are NFKC
normalised and lowercased, split byte-level (so no caption has unknown characters), end
with an ``[EOT]`` token and are padded with ``[PAD]`` (id 0) to a fixed length. Every
setting, the fixed length included, lives in ``tokenizer.json``, so a saved tokenizer
loads back exactly.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
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
MIN_VOCAB_SIZE = 258


@dataclass
class TokenizerConfig:
    vocab_size: int = 16384  # the paper's; small data sets stop merging earlier
    max_length: int = 256  # tokens per caption, [EOT] included
    min_frequency: int = 2  # merges seen fewer times than this are not learned
    max_captions: int | None = 1_000_000  # captions read for training (None: all)

    def __post_init__(self) -> None:
        # Byte-level BPE starts from 256 byte symbols and [PAD], [EOT]: no fewer exist.
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"tokenizer.vocab_size must be at least {MIN_VOCAB_SIZE} (256 byte symbols "
                f"and 2 special tokens), not {self.vocab_size}"
            )
        if self.max_length < 2:
            raise ValueError(f"tokenizer.max_length must be at least 2, not {self.max_length}")
        if self.min_frequency < 1:
            raise ValueError(
                f"tokenizer.min_frequency must be at least 1, not {self.min_frequency}"
            )
        if self.max_captions is not None and self.max_captions < 1:
            raise ValueError(f"tokenizer.max_captions must be at least 1, not {self.max_captions}")


@dataclass
class EncodedText:
    ids: torch.Tensor  # int64 [B, max_length], PAD_ID after the caption's [EOT]
    lengths: torch.Tensor  # int64 [B], tokens before padding, [EOT] included
    truncated: int  # captions in this batch cut to max_length


WORD_CACHE_SIZE = 65536  # captions whose word split the dropout path keeps


def bpe_with_dropout(
    symbols: list[str],
    ranks: dict[tuple[str, str], int],
    dropout: float,
    rng: random.Random,
) -> list[str]:
    """BPE-dropout (Provilkov et al., 2020) on one pre-tokenised word.

    At every step each merge that applies is skipped with probability ``dropout``, and the
    best-ranked of the rest is applied; merging stops when none is left. With
    ``dropout=0`` this is plain BPE. The coin flips come from ``rng``, which the caller
    seeds from torch's generator (see :meth:`TextTokenizer.encode`): Python's generator
    costs a tenth of a microsecond per flip where a ``torch.rand`` call costs several.
    """
    symbols = list(symbols)
    while len(symbols) > 1:
        best: tuple[int, int] | None = None  # (rank, index) of the best merge kept
        for i, pair in enumerate(itertools.pairwise(symbols)):
            rank = ranks.get(pair)
            kept = rank is not None and (dropout <= 0 or rng.random() >= dropout)
            if kept and (best is None or rank < best[0]):  # ties: the leftmost pair
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for messages."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class LengthStatistics:
    mean: float  # tokens per caption, [EOT] included, before truncation
    longest: int
    truncated: int  # captions longer than the tokenizer's max_length


def length_statistics(
    tokenizer: TextTokenizer, captions: Sequence[str], chunk: int = 4096
) -> LengthStatistics:
    """Caption lengths in tokens, encoded a chunk at a time without padding (memory stays
    that of one chunk however many captions there are; Ctrl-C lands between chunks)."""
    plain = Tokenizer.from_str(tokenizer.to_str())
    plain.no_padding()
    plain.no_truncation()
    total, longest, truncated = 0, 0, 0
    for start in range(0, len(captions), chunk):
        lengths = [len(e.ids) for e in plain.encode_batch(list(captions[start : start + chunk]))]
        total += sum(lengths)
        longest = max(longest, *lengths)
        truncated += sum(n > tokenizer.max_length for n in lengths)
    return LengthStatistics(total / max(len(captions), 1), longest, truncated)


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
        model = json.loads(tokenizer.to_str())["model"]
        merges = [
            tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]
        ]
        self._merge_ranks: dict[tuple[str, str], int] = {m: r for r, m in enumerate(merges)}
        self._vocab: dict[str, int] = tokenizer.get_vocab()
        self._plain: Tokenizer | None = None  # no padding, no truncation: for token_count
        # Caption -> its words, for the dropout path (a plain dict, so the tokenizer
        # still pickles; emptied when it reaches WORD_CACHE_SIZE captions).
        self._word_cache: dict[str, tuple[str, ...]] = {}

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

    def encode(
        self,
        captions: Sequence[str],
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> EncodedText:
        """Encodes a batch; ``dropout`` > 0 applies BPE dropout (training only), drawing
        from ``generator`` (torch's global generator by default). A caption whose dropout
        segmentation would not fit is segmented without dropout instead, so dropout never
        truncates a caption that fits."""
        if dropout > 0:
            ids, lengths, truncated = self._encode_with_dropout(captions, dropout, generator)
        else:
            encodings = self._tokenizer.encode_batch(list(captions))
            ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
            ids = ids.reshape(len(encodings), -1)
            lengths = torch.tensor([sum(e.attention_mask) for e in encodings], dtype=torch.long)
            truncated = [bool(e.overflowing) for e in encodings]
        self.encoded_total += len(captions)
        if any(truncated):
            if self.truncated_total == 0:
                first = next(c for c, t in zip(captions, truncated, strict=True) if t)
                log.warning(
                    "captions longer than %d tokens are truncated (first: %r, %d characters); "
                    "the run's summary gives the count",
                    self.max_length,
                    shorten(first),
                    len(first),
                )
            self.truncated_total += sum(truncated)
        return EncodedText(ids, lengths, sum(truncated))

    def _encode_with_dropout(
        self, captions: Sequence[str], dropout: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """The same layout as the ``tokenizers`` path: ids, [EOT], then [PAD] to length.
        The batch's coin flips come from one seed drawn from torch's ``generator``, so a
        run that restores torch's RNG state at resume draws the same segmentations."""
        keep = self.max_length - 1  # room for [EOT]
        rng = random.Random(int(torch.randint(0, 2**62, (), generator=generator)))
        rows, lengths, truncated = [], [], []
        for caption in captions:
            tokens = self._ids_with_dropout(caption, dropout, rng)
            if len(tokens) > keep:
                # Dropout lengthens a segmentation; it must never cut a caption that fits
                # whole, or training would teach the model to ignore its last words.
                tokens = self._ids_with_dropout(caption, 0.0, rng)
            truncated.append(len(tokens) > keep)
            tokens = [*tokens[:keep], EOT_ID]
            rows.append(tokens + [PAD_ID] * (self.max_length - len(tokens)))
            lengths.append(len(tokens))
        ids = torch.tensor(rows, dtype=torch.long).reshape(len(captions), self.max_length)
        return ids, torch.tensor(lengths, dtype=torch.long), truncated

    def _ids_with_dropout(self, caption: str, dropout: float, rng: random.Random) -> list[int]:
        """Token ids of one caption (no [EOT], no truncation) under BPE dropout."""
        ids: list[int] = []
        for word in self._words(caption):
            pieces = bpe_with_dropout(list(word), self._merge_ranks, dropout, rng)
            ids += [self._vocab[p] for p in pieces]
        return ids

    def _words(self, caption: str) -> tuple[str, ...]:
        """The caption normalised and split into words (byte-level symbols), memoised:
        training captions repeat (it saves about a fifth of the dropout path's time)."""
        words = self._word_cache.get(caption)
        if words is None:
            if len(self._word_cache) >= WORD_CACHE_SIZE:
                self._word_cache.clear()
            normalized = self._tokenizer.normalizer.normalize_str(caption)
            pieces = self._tokenizer.pre_tokenizer.pre_tokenize_str(normalized)
            words = self._word_cache[caption] = tuple(word for word, _ in pieces)
        return words

    def token_count(self, caption: str) -> int:
        """Tokens of ``caption`` without [EOT] and without truncation: it fits when this
        is below ``max_length``. Rust-side, so fast on any input."""
        if self._plain is None:
            self._plain = Tokenizer.from_str(self.to_str())
            self._plain.no_padding()
            self._plain.no_truncation()
        return len(self._plain.encode(caption, add_special_tokens=False).ids)

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
