"""Golden values of tiny seeded runs: a refactor that changes any number fails here.

Recorded with torch 2.13.0 on CPU (the Makefile's pin). A deliberate change of the
arithmetic (a new initialisation, another loss) updates these values in the same commit,
with the reason in its message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dalle.cli import main
from dalle.models.dalle_transformer import DALLE_PRESETS, DALLETransformer
from dalle.sampling.sampler import SamplingConfig, sample_image_tokens
from dalle.tokenizers.text import PAD_ID

TRANSFORMER_LOSSES = [3.58825, 3.41442, 3.3034, 3.23376, 3.16359, 3.07256]
TRANSFORMER_TOKENS = [
    [31, 21, 9, 7, 21, 5, 26, 26, 31, 27, 21, 21, 17, 5, 15, 11],
    [0, 13, 31, 22, 10, 25, 7, 14, 16, 4, 21, 12, 15, 10, 17, 4],
]
TOKENIZER_LOSSES = [0.495162, 0.307147, 0.28274, 0.337518, 0.295084, 0.363668]
TOKENIZER_PSNR = 12.0522


def test_tiny_transformer_loss_curve_and_sample() -> None:
    """Six AdamW updates of dalle-tiny on a fixed batch, then a guided, tempered sample
    through the key-value cache."""
    torch.manual_seed(0)
    config = DALLE_PRESETS["dalle-tiny"]
    model = DALLETransformer(config)
    generator = torch.Generator().manual_seed(1)
    text = torch.randint(2, config.text_vocab_size, (4, config.text_len), generator=generator)
    text[:, 6:] = PAD_ID
    image = torch.randint(0, config.image_vocab_size, (4, config.image_tokens),
                          generator=generator)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = model.loss(text, image)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses == pytest.approx(TRANSFORMER_LOSSES, abs=2e-4)
    tokens = sample_image_tokens(model.eval(), text[:2],
                                 SamplingConfig(temperature=0.7, guidance_scale=2.0),
                                 generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert tokens.tolist() == TRANSFORMER_TOKENS


def test_tiny_tokenizer_loss_curve_through_the_training_loop(tmp_path: Path) -> None:
    """Six updates of fsq-tiny on Shapes World through `dalle train-image-tokenizer`:
    the loop, the data order, the loss and the held-out evaluation together."""
    out = tmp_path / "fsq"
    args = ["train-image-tokenizer", "--preset", "fsq-tiny", "--out", str(out),
            "data.image_size=32", "data.batch_size=8", "loop.steps=6", "loop.log_every=1",
            "loop.eval_every=6", "loop.checkpoint_every=6", "eval.samples=8", "eval.grid=2",
            "loop.seed=0"]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses == pytest.approx(TOKENIZER_LOSSES, abs=1e-5)
    evaluation = next(r["eval"] for r in records if "eval" in r)
    assert evaluation["psnr"] == pytest.approx(TOKENIZER_PSNR, abs=1e-3)
