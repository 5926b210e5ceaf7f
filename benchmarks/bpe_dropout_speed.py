"""Milliseconds to encode a batch of Shapes World captions with and without BPE dropout
(the transformer's training captions go through this every step, on the main process).

    python benchmarks/bpe_dropout_speed.py [--tokenizer outputs/demo/tokenizer] [--batch 256]

Run it with ``PYTHONPATH=OLD_CHECKOUT/src`` to time another revision on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dalle.data.datasets import DataConfig, iter_captions
from dalle.tokenizers.text import TextTokenizer


def milliseconds(encode, captions: list[str], repeats: int) -> float:
    encode(captions)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        encode(captions)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, default=Path("outputs/demo/tokenizer"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    tokenizer = TextTokenizer.load(args.tokenizer)
    captions = list(iter_captions(DataConfig(source="shapes", subset="train"), limit=args.batch))
    result = {
        "batch": args.batch,
        "plain_ms": milliseconds(tokenizer.encode, captions, args.repeats),
        "dropout_ms": milliseconds(
            lambda c: tokenizer.encode(c, dropout=0.1), captions, args.repeats
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
