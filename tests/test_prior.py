"""DALL-E 2's diffusion prior: schedules through diffusers, the model's conditioning and
guidance, and `dalle train-prior` end to end with exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dalle.cli import main
from dalle.models.prior import PRIOR_PRESETS, DiffusionPrior, PriorConfig
from dalle.sampling.diffusion import (
    denoise,
    guided,
    prediction_target,
    sample_image_embeddings,
    sampling_schedule,
    training_schedule,
)
from dalle.tokenizers.text import PAD_ID
from dalle.training.prior_task import PriorTask
from dalle.training.stages import PRIOR
from serving_helpers import make_tiny_models

CONFIGS = Path(__file__).parent.parent / "configs"


def test_the_training_schedule_is_the_cosine_schedule() -> None:
    steps, s = 1000, 0.008
    schedule = training_schedule(steps)

    def alpha_bar(t: float) -> float:
        return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 250, 500, 750):
        expected = alpha_bar(t + 1) / alpha_bar(0)  # diffusers' step t is the paper's t + 1
        assert schedule.alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-4)
    assert torch.all(schedule.alphas_cumprod.diff() < 0)


def test_ddim_starts_at_the_last_step_and_lands_on_a_perfect_prediction() -> None:
    schedule = sampling_schedule(1000, 10)
    assert schedule.timesteps[0].item() == 999 and len(schedule.timesteps) == 10
    target = torch.randn(4, 8)
    calls = []

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return target

    out = denoise(predict, (4, 8), 1000, 10, torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-5) and calls == schedule.timesteps.tolist()


def test_guidance_convention() -> None:
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert guided(c, u, 1.0) == c and guided(c, u, 0.0) == u and guided(c, u, 3.0) == 4.0


def _prior() -> DiffusionPrior:
    torch.manual_seed(0)
    return DiffusionPrior(PRIOR_PRESETS["prior-tiny"]).eval()


def test_a_dropped_caption_is_padding_and_the_learned_null_embedding() -> None:
    prior, c = _prior(), PRIOR_PRESETS["prior-tiny"]
    noised, t = torch.randn(3, c.embed_dim), torch.tensor([0, 50, 99])
    text = torch.randint(2, c.text_vocab_size, (3, c.text_len))
    text_embed = F.normalize(torch.randn(3, c.embed_dim), dim=-1)
    out = prior(noised, t, text, text_embed)
    assert out.shape == (3, c.embed_dim)
    dropped = prior(noised, t, text, text_embed, drop_text=torch.tensor([True, False, True]))
    assert torch.allclose(dropped[1], out[1])
    other = prior(noised, t, torch.randint(2, 64, text.shape), torch.randn(3, c.embed_dim),
                  drop_text=torch.ones(3, dtype=torch.bool))  # fmt: skip
    assert torch.allclose(other[[0, 2]], dropped[[0, 2]], atol=1e-6)
    by_hand = prior(noised, t, torch.full_like(text, PAD_ID),
                    prior.null_text_embed.expand(3, -1))  # fmt: skip
    assert torch.allclose(by_hand[[0, 2]], dropped[[0, 2]], atol=1e-6)
    assert not torch.allclose(out[0], dropped[0])  # the caption matters
    assert not torch.allclose(prior(noised, t // 2, text, text_embed), out)  # so does the step


def test_guidance_scale_zero_samples_the_unconditional_prior() -> None:
    prior, c = _prior(), PRIOR_PRESETS["prior-tiny"]
    text = torch.randint(2, c.text_vocab_size, (2, c.text_len))
    text_embed = F.normalize(torch.randn(2, c.embed_dim), dim=-1)

    def sample(scale: float, model) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        return sample_image_embeddings(model, text, text_embed, steps=5, guidance_scale=scale,
                                       candidates=1, generator=generator)  # fmt: skip

    class Unconditional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = prior, prior.config

        def forward(self, x, t, text, text_embed, drop_text=None):
            return self.inner(
                x, t, text, text_embed, drop_text=torch.ones(len(x), dtype=torch.bool)
            )

        def unstandardise(self, x):
            return self.inner.unstandardise(x)

    unguided = sample(0.0, prior)
    assert torch.allclose(unguided, sample(1.0, Unconditional()), atol=1e-5)
    assert not torch.allclose(unguided, sample(1.0, prior), atol=1e-3)
    assert torch.allclose(unguided.norm(dim=-1), torch.ones(2))


def test_two_candidates_keep_the_one_closer_to_the_caption() -> None:
    prior, c = _prior(), PRIOR_PRESETS["prior-tiny"]
    text = torch.randint(2, c.text_vocab_size, (1, c.text_len)).expand(3, -1)
    text_embed = F.normalize(torch.randn(1, c.embed_dim), dim=-1).expand(3, -1)
    # Three rows of one caption with candidates=1 draw exactly what one row with
    # candidates=3 draws; the best of those is what candidates=3 keeps.
    one_each = sample_image_embeddings(prior, text, text_embed, steps=4, candidates=1,
                                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    best = sample_image_embeddings(prior, text[:1], text_embed[:1], steps=4, candidates=3,
                                   generator=torch.Generator().manual_seed(1))  # fmt: skip
    closest = one_each[(one_each @ text_embed[0]).argmax()]
    assert torch.allclose(best[0], closest, atol=1e-5)


def test_the_config_checks_its_values() -> None:
    with pytest.raises(ValueError, match="divide into"):
        PriorConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="timesteps"):
        PriorConfig(timesteps=0)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_models(tmp_path_factory.mktemp("prior"))[1]


def test_train_prior_exports_a_model_with_its_statistics_and_clip(clip_dir, tmp_path) -> None:
    run = tmp_path / "run"
    assert main(["train-prior", "--config", str(CONFIGS / "prior-tiny-cpu.yaml"), "--clip",
                 str(clip_dir), "--out", str(run)]) == 0  # fmt: skip
    prior = DiffusionPrior.from_pretrained(run)
    assert prior.config.embed_dim == 16 and prior.config.text_len == 40
    assert not torch.equal(prior.embed_std, torch.ones(16))  # the data's statistics
    assert (run / "clip" / "model.safetensors").exists()
    assert (run / "clip" / "tokenizer" / "tokenizer.json").exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert any('"image_cosine"' in line for line in lines)


def test_prior_training_resumes_exactly(clip_dir, tmp_path) -> None:
    from interrupt import assert_resumes_exactly

    overrides = [f"clip={clip_dir}", "loop.steps=6", "loop.checkpoint_every=2",
                 "loop.eval_every=6", "data.batch_size=4"]  # fmt: skip
    config = PRIOR.build_config(CONFIGS / "prior-tiny-cpu.yaml", overrides)
    assert_resumes_exactly(config, PriorTask, tmp_path)


@pytest.mark.parametrize("prediction", ["sample", "epsilon", "v_prediction"])
def test_ddim_lands_on_the_clean_sample_for_every_prediction_target(prediction) -> None:
    """A perfect predictor of each kind (what `prediction_target` trains toward) takes
    DDIM from noise to the clean sample."""
    steps, clean = 1000, torch.rand(2, 3, 8, 8) * 2 - 1
    alpha_bar = training_schedule(steps).alphas_cumprod

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alpha_bar[t].view(-1, 1, 1, 1)
        noise = (x - a.sqrt() * clean) / (1 - a).sqrt()
        return prediction_target(prediction, clean, noise, t, steps)

    out = denoise(predict, clean.shape, steps, 25, torch.Generator().manual_seed(0),
                  prediction=prediction, clip_sample=True)  # fmt: skip
    assert torch.allclose(out, clean, atol=1e-4)
