"""The DALL-E transformer: sizes, layout, pads, vocabularies, loss and causality."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dalle.models.dalle_transformer import DALLE_PRESETS, DALLEConfig, DALLETransformer
from dalle.tokenizers.text import PAD_ID


def test_paper_preset_is_twelve_billion_parameters_on_meta() -> None:
    with torch.device("meta"):
        model = DALLETransformer(DALLE_PRESETS["dalle-12b"])
    config = model.config
    assert (config.layers, config.heads, config.width, config.width // config.heads) == (
        64,
        62,
        3968,
        64,
    )
    assert config.sequence_length == 256 + 1024
    assert 11.5e9 < model.parameter_counts()["total"] < 12.5e9
    assert config.layer_attention[-1] == "conv" and config.layer_attention.count("column") == 16


def _batch(config: DALLEConfig, b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    text = torch.randint(2, config.text_vocab_size, (b, config.text_len))
    text[:, 5:] = PAD_ID  # captions of five tokens, then pads
    image = torch.randint(0, config.image_vocab_size, (b, config.image_tokens))
    return text, image


def test_logits_and_loss_shapes_and_weights() -> None:
    torch.manual_seed(0)
    config = DALLE_PRESETS["dalle-tiny"]
    model = DALLETransformer(config)
    text, image = _batch(config)
    text_logits, image_logits = model(text, image)
    assert text_logits.shape == (3, config.text_len, config.text_vocab_size + config.text_len)
    assert image_logits.shape == (3, config.image_tokens, config.image_vocab_size)
    out = model.loss(text, image)
    expected = out["text_loss"] / 8 + 7 * out["image_loss"] / 8
    assert out["loss"].item() == pytest.approx(expected.item())
    # Untrained, each cross-entropy is close to the log of its vocabulary size.
    assert out["image_loss"].item() == pytest.approx(torch.log(torch.tensor(32.0)).item(), abs=0.3)


def test_each_text_position_has_its_own_pad_token() -> None:
    config = DALLE_PRESETS["dalle-tiny"]
    model = DALLETransformer(config)
    text = torch.tensor([[5, 6, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    padded = model.text_with_position_pads(text)
    assert padded.tolist() == [[5, 6, 66, 67, 68, 69, 70, 71]]  # 64 + position


def test_no_logit_depends_on_later_tokens() -> None:
    torch.manual_seed(1)
    config = DALLE_PRESETS["dalle-tiny"]
    model = DALLETransformer(config).eval()
    text, image = _batch(config, b=1)
    base_text, base_image = model(text, image)
    changed = image.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % config.image_vocab_size
    new_text, new_image = model(text, changed)
    assert torch.equal(new_text, base_text)  # text never sees the image
    assert torch.allclose(new_image[0, :10], base_image[0, :10])  # predictions of tokens 0..9
    assert not torch.allclose(new_image[0, 10:], base_image[0, 10:])
    changed_text = text.clone()
    changed_text[0, 3] = 7
    later_text, later_image = model(changed_text, image)
    assert torch.allclose(later_text[0, :3], base_text[0, :3])
    assert not torch.allclose(later_image, base_image)  # every image position sees all text


def test_bad_configs_are_named() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DALLEConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="diagonal"):
        DALLEConfig(layers=2, heads=2, width=8, attention=["row", "diagonal"])
    with pytest.raises(ValueError, match="3 layers"):
        DALLEConfig(layers=2, heads=2, width=8, attention=["row", "row", "conv"])


def test_the_paper_schedule_follows_an_overridden_depth() -> None:
    from dalle.training.stages import TRANSFORMER

    config = TRANSFORMER.build_config(None, ["image_tokenizer=v", "tokenizer=t", "model.layers=3"])
    assert config.model.layer_attention == ["row", "column", "conv"]
    assert len(DALLETransformer(replace(config.model, width=16, heads=2)).blocks) == 3


def test_save_and_load_pretrained(tmp_path: Path) -> None:
    model = DALLETransformer(DALLE_PRESETS["dalle-tiny"]).eval()
    model.save_pretrained(tmp_path)
    loaded = DALLETransformer.from_pretrained(tmp_path)
    text, image = _batch(model.config, b=2)
    assert torch.equal(loaded(text, image)[1], model(text, image)[1])
    assert loaded.config == model.config


def _sdpa_and_flex(device: str, block: int = 128) -> tuple[DALLETransformer, DALLETransformer]:
    torch.manual_seed(0)
    base = DALLE_PRESETS["dalle-tiny"]
    fields = {**base.__dict__, "attention": ["row", "column", "full", "conv"]}
    sdpa = DALLETransformer(DALLEConfig(**fields)).to(device)
    flex_fields = {**fields, "attention_backend": "flex", "flex_block_size": block}
    flex = DALLETransformer(DALLEConfig(**flex_fields)).to(device)
    flex.load_state_dict(sdpa.state_dict())
    return sdpa, flex


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("block", [128, 16])
def test_flex_attention_back_end_agrees_with_sdpa(block: int) -> None:
    """Any block size computes the same attention; a smaller one skips more tiles."""
    sdpa, flex = _sdpa_and_flex("cpu", block)
    text, image = _batch(sdpa.config, b=2)
    with torch.no_grad():  # FlexAttention has no backward on the CPU
        for a, b in zip(sdpa(text, image), flex(text, image), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    # On an 8x8 grid (73 positions), 16-wide tiles let a row layer skip tiles a causal
    # one computes; 128-wide ones cover the whole sequence in one tile.
    grid8 = DALLETransformer(DALLEConfig(**{**flex.config.__dict__, "image_grid": 8}))
    with torch.no_grad():
        grid8(*_batch(grid8.config, b=1))
    masks = {k: grid8._block_masks[(k, grid8.config.sequence_length, "cpu")]
             for k in ("row", "full")}  # fmt: skip
    visited = {k: int(m.kv_num_blocks.sum() + m.full_kv_num_blocks.sum())
               for k, m in masks.items()}  # fmt: skip
    assert tuple(masks["row"].BLOCK_SIZE) == (block, block)
    assert (visited["row"] < visited["full"]) == (block == 16)
    with pytest.raises(ValueError, match="dropout"):
        DALLEConfig(**{**sdpa.config.__dict__, "attention_backend": "flex", "dropout": 0.1})
    with pytest.raises(ValueError, match="multiple of 16"):
        DALLEConfig(**{**sdpa.config.__dict__, "flex_block_size": 24})


def test_blocked_attention_back_end_agrees_with_sdpa() -> None:
    sdpa, _ = _sdpa_and_flex("cpu")
    blocked = DALLETransformer(
        DALLEConfig(**{**sdpa.config.__dict__, "attention_backend": "blocked"})
    )
    blocked.load_state_dict(sdpa.state_dict())
    text, image = _batch(sdpa.config, b=2)
    for a, b in zip(sdpa(text, image), blocked(text, image), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    for model in (sdpa, blocked):
        model.loss(text, image)["loss"].backward()
    for (name, a), b in zip(sdpa.named_parameters(), blocked.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    # A partial sequence (sampling's prefix) takes the masked path and still agrees.
    prefix = image[:, :5]
    assert torch.allclose(sdpa(text, prefix)[1], blocked(text, prefix)[1], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA")
def test_flex_attention_gradients_agree_on_cuda() -> None:
    sdpa, flex = _sdpa_and_flex("cuda")
    text, image = (t.cuda() for t in _batch(sdpa.config, b=2))
    for model in (sdpa, flex):
        model.loss(text, image)["loss"].backward()
    for (name, a), b in zip(sdpa.named_parameters(), flex.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-4), name
