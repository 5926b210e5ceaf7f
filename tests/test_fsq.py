"""The FSQ image tokenizer: the quantizer's arithmetic, and the image-tokenizer interface
that every kind of tokenizer shares (training, export, loading, reconstruct)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dalle.cli import main
from dalle.data.datasets import Batch
from dalle.losses.reconstruction import gradient_difference, reconstruction_loss
from dalle.models.fsq import (
    FSQ_LEVELS,
    FSQ_PRESETS,
    FSQConfig,
    FSQTokenizer,
    bound,
    codes_to_indices,
    indices_to_codes,
    quantize,
)
from dalle.models.image_tokenizer import ImageTokenizer, load_image_tokenizer
from dalle.training.fsq_task import FSQTask, FSQTrainConfig

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("levels", list(FSQ_LEVELS.values()), ids=str)
def test_every_index_round_trips_and_is_reachable(levels: list[int]) -> None:
    levels_t = torch.tensor(levels)
    indices = torch.arange(math.prod(levels))
    codes = indices_to_codes(indices, levels_t)  # [V, d]
    assert torch.equal(codes_to_indices(codes, levels_t), indices)
    assert codes.min() >= -1 and codes.max() <= 1
    # Each code is a fixed point of the quantizer reached from the unbounded latent that
    # bound() maps onto it, so the encoder can reach every token.
    half = (levels_t - 1) * (1 + 1e-3) / 2
    offset = torch.where(levels_t % 2 == 0, 0.5, 0.0)
    target = codes * (levels_t // 2)  # the rounded, bounded values
    latent = torch.atanh((target + offset) / half) - torch.atanh(offset / half)
    assert torch.equal(codes_to_indices(quantize(latent, levels_t), levels_t), indices)


def test_bound_keeps_each_channel_within_its_levels() -> None:
    levels = torch.tensor([8, 5, 3])
    rounded = bound(torch.linspace(-50, 50, 2001)[:, None].expand(-1, 3), levels).round()
    for channel, count in enumerate(levels.tolist()):
        assert rounded[:, channel].unique().numel() == count


def test_rounding_passes_the_gradient_straight_through() -> None:
    levels = torch.tensor([8, 5, 5, 5])
    z = torch.randn(16, 4, requires_grad=True)
    quantize(z, levels).sum().backward()
    # d/dz of bound(z) / half_width: the tanh's slope, as if there were no rounding.
    expected_z = z.detach().clone().requires_grad_(True)
    (bound(expected_z, levels) / (levels // 2)).sum().backward()
    assert torch.allclose(z.grad, expected_z.grad) and (z.grad > 0).all()


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 5, 5, 5, 5]])
def test_codes_are_the_tokens_continuous_face(levels: list[int]) -> None:
    """What a latent decoder draws: ``codes`` of an image decode to the image its tokens
    decode to, and any values snap to the nearest level, the ends included (an even
    level count is not symmetric: 8 levels run from -4/4 to 3/4)."""
    torch.manual_seed(0)
    model = FSQTokenizer(FSQConfig(levels=levels, downsample=2, hidden_width=8)).eval()
    images = (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8)
    codes, tokens = model.codes(images), model.encode(images)
    assert codes.shape == (2, len(levels), 4, 4)
    assert torch.equal(model.decode_codes(codes), model.decode(tokens))
    half = torch.tensor(levels) // 2
    step = 0.4 / half.view(1, -1, 1, 1)  # less than half a level either way
    assert torch.equal(model.decode_codes(codes + step * (2 * torch.rand_like(codes) - 1)),
                       model.decode(tokens))  # fmt: skip
    top = torch.tensor([float(lv - 1 - h) / h for lv, h in zip(levels, half.tolist(), strict=True)])
    far = torch.full_like(codes, 5.0)
    top_tokens = codes_to_indices(top.expand(2, 4, 4, -1), torch.tensor(levels))
    assert torch.equal(model.decode_codes(far), model.decode(top_tokens))
    bottom_tokens = codes_to_indices(-torch.ones(2, 4, 4, len(levels)), torch.tensor(levels))
    assert torch.equal(model.decode_codes(-far), model.decode(bottom_tokens))


def test_presets_give_their_grids_and_vocabularies() -> None:
    grids = {"fsq-64-8x8": (64, 8, 4375), "fsq-64-16x16": (64, 16, 1000),
             "fsq-256-32x32": (256, 32, 15360)}  # fmt: skip
    for name, (size, grid, vocab) in grids.items():
        with torch.device("meta"):
            model = FSQTokenizer(FSQ_PRESETS[name])
        assert model.token_grid(size) == grid and model.vocab_size == vocab


def _tail(layers: torch.nn.Sequential) -> torch.nn.Sequential:
    """The decoder's layers after its last residual block, up to its output's SiLU."""
    last = max(i for i, m in enumerate(layers) if type(m).__name__ == "_ResidualBlock")
    return layers[last + 1 : -2]


@pytest.mark.parametrize("active", [False, True])
def test_decoder_activation_makes_the_upsampling_layers_nonlinear(active: bool) -> None:
    config = replace(FSQ_PRESETS["fsq-64-8x8"], hidden_width=8, decoder_activation=active)
    tail = _tail(FSQTokenizer(config).decoder.layers).double()
    width = next(m for m in tail if isinstance(m, torch.nn.Conv2d)).in_channels
    a, b = torch.randn(2, 1, width, 4, 4, dtype=torch.float64)
    additive = torch.allclose(tail(a + b) - tail(b), tail(a) - tail(torch.zeros_like(a)))
    assert additive != active  # without it, two convolutions compose into one linear map


def test_configs_saved_before_decoder_activation_load_without_it(tmp_path: Path) -> None:
    model = FSQTokenizer(FSQ_PRESETS["fsq-tiny"])
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["config"].pop("decoder_activation")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = load_image_tokenizer(tmp_path)
    assert not loaded.config.decoder_activation
    images = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(loaded.decode(loaded.encode(images)), model.decode(model.encode(images)))


def test_tokenizer_interface_and_reconstruction_loss() -> None:
    model = FSQTokenizer(FSQ_PRESETS["fsq-tiny"])
    assert isinstance(model, ImageTokenizer)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    tokens = model.encode(images)
    assert tokens.shape == (2, 4, 4) and tokens.dtype == torch.long
    assert tokens.min() >= 0 and tokens.max() < model.vocab_size
    assert model.decode(tokens).shape == (2, 3, 8, 8)
    white = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    confident, unsure = torch.full((1, 3, 8, 8), 12.0), torch.zeros(1, 3, 8, 8)  # logits
    assert reconstruction_loss(confident, white) < 1e-5
    assert reconstruction_loss(unsure, white) == pytest.approx(math.log(2))


def test_train_export_load_and_reconstruct(tmp_path: Path, capsys) -> None:
    run = tmp_path / "fsq"
    args = ["train-image-tokenizer", "--preset", "fsq-tiny", "--out", str(run), "--steps", "3",
            "data.image_size=16", "data.batch_size=4", "eval.samples=8", "eval.grid=4",
            "loop.log_every=1"]  # fmt: skip
    assert main(args) == 0
    tokenizer = load_image_tokenizer(run)
    assert isinstance(tokenizer, FSQTokenizer) and tokenizer.vocab_size == 25
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = next(r["eval"] for r in records if "eval" in r)
    assert {"psnr", "codes_used", "foreground_codes_used", "foreground_perplexity"} <= set(
        evaluated
    )
    out = tmp_path / "recon"
    capsys.readouterr()
    assert main(["reconstruct", "--tokenizer", str(run), "--data", "shapes", "--subset",
                 "holdout", "--count", "6", "--size", "16", "--out-dir", str(out),
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["images"] == 6
    assert len(list(out.glob("*.png"))) == 6 and len(list(out.glob("*.txt"))) == 6
    assert main(["judge", str(out)]) == 0  # any judge can score what reconstruct wrote
    assert main(["reconstruct", "--tokenizer", str(run), "--data", "shapes", "--count", "2",
                 "--size", "16", "--out-dir", str(tmp_path / "refined"),
                 "--refine-steps", "2"]) == 0  # fmt: skip
    # The dVAE opens through the same loader.
    vae = tmp_path / "vae"
    assert main(["train-vae", "--config", str(CONFIGS / "dvae-tiny-cpu.yaml"), "--out", str(vae),
                 "loop.steps=1", "eval.samples=4", "eval.grid=2"]) == 0  # fmt: skip
    assert type(load_image_tokenizer(vae)).__name__ == "DiscreteVAE"
    searching = load_image_tokenizer(vae, refine_steps=2, refine_precision="bf16").config
    assert (searching.refine_steps, searching.refine_precision) == (2, "bf16")
    with pytest.raises(ValueError, match="not an image tokenizer"):
        clip_like = tmp_path / "other"
        clip_like.mkdir()
        (clip_like / "config.json").write_text('{"model_type": "CLIP", "config": {}}')
        load_image_tokenizer(clip_like)


def test_gradient_difference_asks_for_edges_that_pixel_error_lets_blur() -> None:
    """A thin white gap between two dark blocks, and the same with the gap filled in
    grey: the extra term costs the blur more than the pixel error alone does."""
    sharp = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    sharp[..., :, :3], sharp[..., :, 4:7] = 0, 0  # columns 3 and 7 are the gaps
    blurred = sharp.clone()
    blurred[..., :, 3] = 128
    logits = torch.logit((blurred.float() / 255).clamp(1e-4, 1 - 1e-4))
    assert gradient_difference(sharp.float() / 255, sharp.float() / 255) == 0
    extra = reconstruction_loss(logits, sharp, 1.0) - reconstruction_loss(logits, sharp)
    pixels = torch.sigmoid(logits)
    assert extra == pytest.approx(gradient_difference(pixels, sharp.float() / 255).item())
    assert extra > 2 * torch.nn.functional.mse_loss(pixels, sharp.float() / 255)


def test_the_demo_tokenizer_does_not_collapse_at_its_learning_rate(tmp_path: Path) -> None:
    """The demo's FSQ config, seed 0, through the end of warm-up at lr 2e-3: with squared
    error on sigmoid pixels and no GroupNorm, this run's latents ran away near update 120
    (|z| ~ 40,000), every position took one code and the loss stopped falling. The
    collapse check must stay quiet. 240 updates: with the decoder's SiLU the first 150
    learn a little slower (18 dB at 160 updates, 23 dB at 240)."""
    run = tmp_path / "demo-fsq"  # whole images in batches of 32: the setting seen to collapse
    assert main(["train-image-tokenizer", "--config", str(CONFIGS / "fsq-shapes-demo.yaml"),
                 "--out", str(run), "loop.steps=240", "loop.max_minutes=0",
                 "loop.schedule_clock=steps", "loop.eval_every=240", "loop.checkpoint_every=240",
                 "loop.log_every=40", "eval.samples=64", "eval.grid=2",
                 "crop=0", "crop_foreground=false", "data.batch_size=32"]) == 0  # fmt: skip
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = next(r["eval"] for r in records if "eval" in r)
    assert evaluated["collapsed"] == 0
    assert evaluated["foreground_codes_used"] > 0.1 and evaluated["psnr"] > 20


@pytest.mark.parametrize("preset", ["fsq-tiny", "dvae-tiny"])  # both have 2x2-pixel patches
def test_training_on_crops_evaluates_whole_images(preset: str, tmp_path: Path, capsys) -> None:
    run = tmp_path / "crops"
    args = ["train-image-tokenizer", "--preset", preset, "--out", str(run), "--steps", "2",
            "data.image_size=16", "data.batch_size=4", "eval.samples=8", "eval.grid=2"]  # fmt: skip
    assert main([*args, "crop=8"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "psnr" in next(r["eval"] for r in records if "eval" in r)
    tokenizer = load_image_tokenizer(run)  # trained on 8px crops, used on 16px images
    assert tokenizer.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)).shape == (1, 8, 8)
    assert (
        main([*args[:4], str(tmp_path / "bad"), *args[5:], "crop=5"]) == 2
    )  # a bad setting: one line, no traceback
    assert (
        "crop 5 must be at most data.image_size (16) and a multiple of the patch size (2)"
        in capsys.readouterr().err
    )
    assert main([*args[:4], str(tmp_path / "bad2"), *args[5:], "crop_foreground=true"]) == 2
    assert "crop_foreground weighs the corners of crops: it needs crop" in capsys.readouterr().err


def test_foreground_crops_spend_updates_on_objects() -> None:
    """With ``crop_foreground`` a window of background alone is drawn 1 time in 50 against
    one full of objects; uniform corners draw it as often as any other."""
    config = FSQTrainConfig(preset="fsq-tiny", model=FSQ_PRESETS["fsq-tiny"], crop=8)
    config.data = replace(config.data, image_size=16, batch_size=4)
    config.eval.samples = 4
    task = FSQTask(config, torch.device("cpu"))
    images = torch.full((3000, 3, 16, 16), 255, dtype=torch.uint8)
    images[:, :, 8:16, 8:16] = 0  # a black 8x8 block: 1 of the 5 x 5 windows is all object
    torch.manual_seed(0)
    uniform = task.training_images(Batch(images, [""] * len(images), [], []))
    config.crop_foreground = True
    weighted = task.training_images(Batch(images, [""] * len(images), [], []))
    empty = [(crops < 128).flatten(1).sum(1).eq(0).float().mean().item()
             for crops in (uniform, weighted)]  # fmt: skip
    assert 0.31 < empty[0] < 0.41  # 9 of 25 windows (a corner at 0) miss it: 36%
    # Those 9 weigh 0.02 each against 16 that hold 1/16 to all of it: 2.7%.
    assert empty[1] < 0.05
