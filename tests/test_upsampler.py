"""DALL-E 2's upsampler: the blur that corrupts its training input, the model's shapes and
checks, and `dalle train-upsampler` with exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dalle.cli import main
from dalle.data.images import shrink
from dalle.models.upsampler import UPSAMPLER_PRESETS, Upsampler, UpsamplerConfig, gaussian_blur
from dalle.sampling.diffusion import upsample_images
from dalle.training.stages import UPSAMPLER
from dalle.training.upsampler_task import UpsamplerTask

CONFIGS = Path(__file__).parent.parent / "configs"


def test_gaussian_blur_keeps_flat_images_and_the_mean_and_smooths_each_by_its_own_sigma():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 12, 12)
    same = gaussian_blur(images, torch.zeros(3))
    assert torch.allclose(same, images, atol=1e-5)
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat, atol=1e-6)
    blurred = gaussian_blur(images, torch.tensor([0.0, 0.8, 2.0]))
    assert torch.allclose(blurred[0], images[0], atol=1e-5)  # its own sigma: none
    spread = [blurred[i].std().item() for i in range(3)]
    assert spread[1] < images[1].std().item() and spread[2] < spread[1]
    assert abs(blurred[2].mean().item() - images[2].mean().item()) < 0.02


def test_shrink_averages_each_block():
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    assert torch.equal(shrink(images, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_the_upsampler_doubles_the_image_and_checks_its_config():
    torch.manual_seed(0)
    model = Upsampler(UPSAMPLER_PRESETS["upsampler-tiny"]).eval()
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.1)  # it starts at zero
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([5, 50]), low)
    assert out.shape == (2, 3, 16, 16)
    images = upsample_images(model, low, steps=3, generator=torch.Generator().manual_seed(1))
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    with pytest.raises(ValueError, match="multiple of"):
        UpsamplerConfig(image_size=30, scale=4)
    with pytest.raises(ValueError, match="blur_sigma"):
        UpsamplerConfig(blur_sigma=-1)


def test_train_upsampler_exports_and_measures_against_bicubic(tmp_path):
    out = tmp_path / "up"
    assert main(["train-upsampler", "--config", str(CONFIGS / "upsampler-tiny-cpu.yaml"),
                 "--out", str(out)]) == 0  # fmt: skip
    model = Upsampler.from_pretrained(out)
    assert model.config.image_size == 16 and model.config.low_size == 8
    metrics = (out / "metrics.jsonl").read_text()
    for key in ('"psnr"', '"psnr_bicubic"', '"upsampled_judge_pass"', '"val_loss"'):
        assert key in metrics
    assert list((out / "samples").glob("upsampled-*.png"))


def test_upsampler_training_resumes_exactly(tmp_path):
    from interrupt import assert_resumes_exactly

    overrides = ["loop.steps=6", "loop.checkpoint_every=2", "loop.eval_every=6",
                 "data.batch_size=4", "eval.grid=2"]  # fmt: skip
    config = UPSAMPLER.build_config(CONFIGS / "upsampler-tiny-cpu.yaml", overrides)
    assert_resumes_exactly(config, UpsamplerTask, tmp_path)
