"""Pre-tokenized data: `dalle tokenize-data` writes what the image tokenizer encodes, and
`dalle train` reads those shards instead of images, and refuses another tokenizer's."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dalle.cli import main
from dalle.data.datasets import DataConfig, load_samples
from dalle.models.image_tokenizer import load_image_tokenizer

CONFIGS = Path(__file__).parent.parent / "configs"


def _fsq(out: Path, steps: int = 2) -> Path:
    assert main(["train-image-tokenizer", "--preset", "fsq-tiny", "--out", str(out), "--steps",
                 str(steps), "data.image_size=32", "data.batch_size=4", "eval.samples=8",
                 "eval.grid=4"]) == 0  # fmt: skip
    return out


def test_tokenize_data_then_train_on_the_shards(tmp_path: Path, capsys) -> None:
    fsq = _fsq(tmp_path / "fsq")
    shards = tmp_path / "shards"
    capsys.readouterr()
    assert main(["tokenize-data", "--tokenizer", str(fsq), "--data", "shapes", "--count", "96",
                 "--size", "32", "--shard-size", "40", "--out", str(shards),
                 "--json"]) == 0  # fmt: skip
    meta = json.loads(capsys.readouterr().out)
    assert meta["samples"] == 96 and meta["shards"] == 3 and meta["token_grid"] == 16
    pattern = str(shards / "tokens-{000000..000002}.tar")
    # The shards hold exactly what the tokenizer encodes, keyed as the source.
    read = load_samples(DataConfig(source=pattern, image_size=32), 96)
    images = load_samples(DataConfig(source="shapes", image_size=32, count=96), 96)
    assert read.keys == images.keys and read.captions == images.captions
    assert torch.equal(read.tokens, load_image_tokenizer(fsq).encode(images.images))
    assert meta["refine_steps"] == 0
    # Encoding by search, asked for on the command line, is what the shards hold and say.
    refined = tmp_path / "refined"
    assert main(["tokenize-data", "--tokenizer", str(fsq), "--data", "shapes", "--count", "8",
                 "--size", "32", "--out", str(refined), "--refine-steps", "2",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["refine_steps"] == 2
    read = load_samples(DataConfig(source=str(refined / "tokens-000000.tar"), image_size=32), 8)
    refiner = load_image_tokenizer(fsq, refine_steps=2)
    assert torch.equal(read.tokens, refiner.encode(images.images[:8]))

    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", "--config", str(CONFIGS / "tokenizer-shapes.yaml"),
                 "--out", str(tok), "tokenizer.max_captions=300",
                 "tokenizer.max_length=24"]) == 0  # fmt: skip
    run = tmp_path / "run"
    train = ["train", "--config", str(CONFIGS / "dalle-tiny-cpu.yaml"), "--tokenizer", str(tok),
             "--data", pattern, "--out", str(run)]  # fmt: skip
    small = ["data.image_size=32", "loop.steps=2", "eval.samples=4", "eval.grid=1"]
    assert main([*train, "--image-tokenizer", str(fsq), *small]) == 0
    assert (run / "image_tokenizer" / "model.safetensors").exists()
    # Shards of one tokenizer with another tokenizer: refused, naming both.
    other = _fsq(tmp_path / "other", steps=3)
    capsys.readouterr()
    assert main([*train, "--image-tokenizer", str(other), *small]) == 2
    assert "tokenized by another image tokenizer" in capsys.readouterr().err
