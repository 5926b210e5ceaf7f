"""Typed configs: YAML, dotted overrides, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dalle.cli import main
from dalle.config import ConfigError, load_config, save_config
from dalle.training.caption_tokenizer import TokenizerTrainConfig
from dalle.training.stages import (
    CLIP_STAGE,
    DECODER,
    IMAGE_TOKENIZER,
    PRIOR,
    TOKEN_DECODER,
    TRANSFORMER,
    TRANSFORMER_DECODER,
    UPSAMPLER,
)

CONFIGS = Path(__file__).parent.parent / "configs"
LOADERS = {
    "tokenizer-": lambda path: load_config(TokenizerTrainConfig, path),
    "dvae-": lambda path: IMAGE_TOKENIZER.build_config(path, [])[1],
    "fsq-": lambda path: IMAGE_TOKENIZER.build_config(path, [])[1],
    "dalle-": lambda path: TRANSFORMER.build_config(
        path, ["image_tokenizer=some/fsq", "tokenizer=some/tok"]
    ),
    "clip-": lambda path: CLIP_STAGE.build_config(path, ["tokenizer=some/tok"]),
    "prior-": lambda path: PRIOR.build_config(path, ["clip=some/clip"]),
    "decoder-": lambda path: DECODER.build_config(path, ["clip=some/clip"]),
    "token-decoder-": lambda path: TOKEN_DECODER.build_config(
        path, ["clip=some/clip", "image_tokenizer=some/fsq"]
    ),
    "transformer-decoder-": lambda path: TRANSFORMER_DECODER.build_config(
        path, ["clip=some/clip", "image_tokenizer=some/fsq"]
    ),
    "upsampler-": lambda path: UPSAMPLER.build_config(path, []),
}


def test_defaults_file_and_overrides_merge_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  image_size: 32\ntokenizer:\n  vocab_size: 300\n")
    config = load_config(
        TokenizerTrainConfig, path, ["tokenizer.vocab_size=400", "data.count=null"]
    )
    assert config.data.image_size == 32  # from the file
    assert config.tokenizer.vocab_size == 400  # override wins
    assert config.data.count is None and config.tokenizer.max_length == 256  # defaults
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(TokenizerTrainConfig, tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.imagesize=3"], r"data\.imagesize.*Did you mean: 'image_size'"),
        (["tokenizer.vocab_size=lots"], r"tokenizer\.vocab_size"),
        (["nonsense=1"], r"'nonsense'"),
        (["data.image_size"], r"not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TokenizerTrainConfig, None, overrides)


def test_bad_key_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tokenizer:\n  vocab_sise: 10\n")
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_sise"):
        load_config(TokenizerTrainConfig, path)


def test_cli_reports_config_errors_cleanly(tmp_path: Path, capsys) -> None:
    code = main(["tokenizer", "train", "--out", str(tmp_path), "tokenizer.vocab=3"])
    assert code == 2
    assert "tokenizer.vocab" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    loader = next(fn for prefix, fn in LOADERS.items() if path.name.startswith(prefix))
    loader(path)


def test_the_demo_stage_configs_load() -> None:
    from dalle.demo import CONFIG_DIR

    assert LOADERS["fsq-"](CONFIG_DIR / "fsq-shapes-demo.yaml").preset.startswith("fsq")
    LOADERS["dalle-"](CONFIG_DIR / "dalle-shapes-demo.yaml")
