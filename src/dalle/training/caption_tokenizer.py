"""The caption tokenizer stage: a byte-level BPE trained on a source's captions.

Not a stage of the training loop (there are no updates to resume), but a stage all the
same: `dalle tokenizer train` and `make demo` both run it through :func:`train_caption_tokenizer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dalle.config import save_config
from dalle.data.datasets import DataConfig, SkipLog, iter_captions, training_data
from dalle.tokenizers.text import TextTokenizer, TokenizerConfig, length_statistics


@dataclass
class TokenizerTrainConfig:
    """Settings of `dalle tokenizer train`: by default the train subset's captions only."""

    data: DataConfig = training_data()
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def train_caption_tokenizer(config: TokenizerTrainConfig, out: Path) -> str:
    """Trains the BPE on ``config.data``'s captions (at most ``tokenizer.max_captions``)
    and saves it, with its settings, in ``out``. Returns a one-line report; captions the
    loader skipped are summarised on lines before it."""
    skips = SkipLog()
    captions = list(iter_captions(config.data, config.tokenizer.max_captions, skips))
    if not captions:
        raise ValueError(f"no usable captions in {config.data.source}")
    tokenizer = TextTokenizer.train(captions, config.tokenizer)
    tokenizer.save(out)
    save_config(config, out / "train_config.yaml")
    info, stats = tokenizer.describe(), length_statistics(tokenizer, captions)
    report = (f"trained BPE on {len(captions)} captions: vocabulary {info['vocab_size']} "
              f"({info['merges']} merges), mean {stats.mean:.1f} and longest {stats.longest} "
              f"tokens per caption; {stats.truncated} of {len(captions)} captions would be "
              f"cut to {tokenizer.max_length} tokens")  # fmt: skip
    return f"{skips.summary()}\n{report}" if skips.total else report
