"""Discrete VAE: architecture, pixel mapping, objective, schedules, save/load, training."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dalle.losses.dvae import (
    dvae_loss,
    gaussian_nll,
    gumbel_softmax,
    kl_to_uniform,
    logit_laplace_nll,
    usage_kl,
)
from dalle.models.dvae import DVAE_PRESETS, DiscreteVAE, DVAEConfig, map_pixels, unmap_pixels
from dalle.training.dvae_task import (
    CEILING_START,
    DVAEObjectiveConfig,
    objective_schedules,
    scale_ceiling,
)
from dalle.training.schedules import cosine_anneal, warmup_cosine


def test_paper_preset_matches_released_model() -> None:
    with torch.device("meta"):
        model = DiscreteVAE(DVAE_PRESETS["dvae-paper"])
        logits = model.encoder(torch.empty(2, 3, 256, 256))
        stats = model.decoder(torch.empty(2, 8192, 32, 32))
    counts = model.parameter_counts()
    assert counts["encoder"] == 53_786_240
    assert counts["decoder"] == 43_829_766
    assert logits.shape == (2, 8192, 32, 32)
    assert stats.shape == (2, 6, 256, 256)
    # Residual branches are scaled by 1 / n_layers**2 = 1 / (4 * 2)**2.
    assert model.encoder.blocks[1].gain == pytest.approx(1 / 64)


def test_groups_set_the_downsampling_factor() -> None:
    config = DVAEConfig(vocab_size=64, group_count=3, hidden_width=16, blocks_per_group=1)
    model = DiscreteVAE(config)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    tokens = model.encode(images)
    assert config.downsample == 4 and tokens.shape == (2, 16, 16) and tokens.dtype == torch.long
    decoded = model.decode(tokens)
    assert decoded.shape == (2, 3, 64, 64) and decoded.dtype == torch.uint8
    with pytest.raises(ValueError, match="multiple"):
        config.token_grid(30)


def test_pixel_mapping_round_trip() -> None:
    x = torch.rand(4, 3, 8, 8)
    mapped = map_pixels(x, 0.1)
    assert mapped.min() >= 0.1 - 1e-6 and mapped.max() <= 0.9 + 1e-6
    assert torch.allclose(unmap_pixels(mapped, 0.1), x, atol=1e-6)
    assert unmap_pixels(torch.tensor([0.0, 1.0]), 0.1).tolist() == [0.0, 1.0]  # clamped


def test_logit_laplace_is_a_density_and_peaks_at_its_location() -> None:
    x = torch.linspace(1e-5, 1 - 1e-5, 400_001).view(1, 1, 1, -1)
    for mu, log_b in ((0.3, -1.0), (-1.5, -0.3)):
        stats = torch.cat([torch.full_like(x, mu), torch.full_like(x, log_b)], dim=1)
        density = torch.exp(-logit_laplace_nll(x, stats)).flatten()
        assert torch.trapezoid(density, x.flatten()).item() == pytest.approx(1.0, abs=3e-3)
    # For a fixed pixel the NLL is smallest when mu is the pixel's logit.
    pixel = torch.full((1, 1, 1, 1), 0.7)
    mus = torch.linspace(-3, 3, 601)
    nlls = [logit_laplace_nll(pixel, torch.tensor([[[[m]], [[0.0]]]])).item() for m in mus]
    assert mus[int(torch.tensor(nlls).argmin())].item() == pytest.approx(
        math.log(0.7 / 0.3), abs=0.01
    )


def test_a_scale_floor_bounds_the_density_but_not_where_it_peaks() -> None:
    pixel = torch.full((1, 1, 1, 1), 0.9)
    exact = math.log(0.9 / 0.1)

    def nll(mu: float, log_b: float, floor: float) -> torch.Tensor:
        stats = torch.tensor([[[[mu]], [[log_b]]]], requires_grad=True)
        return logit_laplace_nll(pixel, stats, min_scale=floor), stats

    # Without a floor, shrinking the scale at the exact value earns without end.
    assert nll(exact, -12.0, 0.0)[0].item() < nll(exact, -5.0, 0.0)[0].item() - 6
    # With one, every scale below it is the floor: same value, no gradient to shrink it.
    low, stats = nll(exact, -12.0, 0.5)
    assert low.item() == pytest.approx(nll(exact, math.log(0.5), 0.5)[0].item())
    low.backward()
    assert stats.grad[0, 1].item() == 0.0
    # The location that fits best is still the pixel's logit.
    mus = torch.linspace(0, 4, 401)
    nlls = torch.stack([nll(m.item(), -3.0, 0.5)[0].detach().flatten() for m in mus])
    assert mus[int(nlls.argmin())].item() == pytest.approx(exact, abs=0.01)


def test_a_scale_ceiling_keeps_a_wrong_pixel_costly_and_its_location_pulled() -> None:
    pixel = torch.full((1, 1, 1, 1), 0.9)
    location = math.log(0.9 / 0.1) - 4.0  # 4 from the pixel's logit

    def nll(log_b: float, ceiling: float) -> tuple[torch.Tensor, torch.Tensor]:
        stats = torch.tensor([[[[location]], [[log_b]]]], requires_grad=True)
        value = logit_laplace_nll(pixel, stats, min_scale=0.2, max_scale=ceiling)
        value.backward()
        return value.detach(), stats.grad.flatten()

    # Without a ceiling the best scale is the error itself: the wrong pixel costs about
    # log 4 + 1 and pulls its location by 1/4.
    wide, wide_grad = nll(math.log(4.0), 0.0)
    assert wide_grad[1].item() == pytest.approx(0.0, abs=1e-5)  # the scale is at its best
    assert wide_grad[0].abs().item() == pytest.approx(0.25, abs=1e-4)
    # Under a ceiling of 0.5 any wider scale is 0.5: log 0.5 + 8, about 5 nats more, and
    # a pull of 2.
    capped, capped_grad = nll(math.log(4.0), 0.5)
    assert capped.item() == pytest.approx(nll(math.log(0.5), 0.0)[0].item())
    assert capped.item() > wide.item() + 4
    assert capped_grad[0].abs().item() == pytest.approx(2.0, abs=1e-4)
    assert capped_grad[1].item() == 0.0
    with pytest.raises(ValueError, match="max_scale"):
        DVAEObjectiveConfig(min_scale=0.2, max_scale=0.1)


def test_a_scale_ceiling_can_come_down_over_a_warm_up() -> None:
    at_once = DVAEObjectiveConfig(min_scale=0.2, max_scale=0.3)
    assert scale_ceiling(at_once, 0) == pytest.approx(0.3)
    assert scale_ceiling(DVAEObjectiveConfig(), 0) == 0.0  # no ceiling at all
    warming = replace(at_once, max_scale_warmup_steps=600)
    ceilings = [scale_ceiling(warming, p) for p in (0, 300, 600, 10**6)]
    assert ceilings[0] == pytest.approx(CEILING_START)
    assert ceilings[1] == pytest.approx(math.sqrt(CEILING_START * 0.3))  # log-linear midway
    assert ceilings[2:] == [pytest.approx(0.3)] * 2


def test_kl_to_uniform_bounds() -> None:
    assert kl_to_uniform(torch.zeros(2, 16, 3, 3)).abs().max() < 1e-6
    peaked = torch.zeros(1, 16, 1, 1)
    peaked[0, 3] = 100.0
    assert kl_to_uniform(peaked).item() == pytest.approx(math.log(16), abs=1e-4)
    relaxed = gumbel_softmax(torch.randn(2, 16, 3, 3), temperature=0.5)
    assert torch.allclose(relaxed.sum(dim=1), torch.ones(2, 3, 3), atol=1e-5)


@pytest.mark.parametrize("latent_pixels", [8, 4])
def test_loss_is_normalised_by_subpixels_with_the_papers_kl_weight_per_subpixel(
    latent_pixels: int,
) -> None:
    """The paper divides the whole loss by 256*256*3, so with its 8x8-pixel latents each
    sub-pixel carries beta/192 of KL; a 4x4-pixel grid must not weigh it 4x more."""
    x = map_pixels(torch.rand(2, 3, 16, 16))
    grid = 16 // latent_pixels
    stats, logits = torch.randn(2, 6, 16, 16), torch.randn(2, 32, grid, grid)
    out = dvae_loss(x, stats, logits, kl_weight=6.6)
    kl_per_subpixel = 6.6 / 192  # the paper's, at any grid
    subpixels_per_latent = 3 * latent_pixels**2
    expected = (
        logit_laplace_nll(x, stats).sum()
        + kl_per_subpixel * subpixels_per_latent * kl_to_uniform(logits).sum()
    ) / (2 * 3 * 256)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_usage_kl_asks_the_batch_to_use_every_code_not_each_position_to_doubt() -> None:
    """Confident positions that together cover every code cost nothing; every position on
    one code costs log V; the term enters the loss weighted per latent like the KL."""
    vocab = 4
    confident = torch.full((1, vocab, 2, 2), -30.0)
    for i in range(vocab):  # position i is sure of code i
        confident[0, i, i // 2, i % 2] = 30.0
    assert usage_kl(confident).item() == pytest.approx(0.0, abs=1e-5)
    assert kl_to_uniform(confident).mean().item() == pytest.approx(math.log(vocab), rel=1e-4)
    collapsed = torch.full((1, vocab, 2, 2), -30.0)
    collapsed[:, 0] = 30.0
    assert usage_kl(collapsed).item() == pytest.approx(math.log(vocab), rel=1e-4)

    x = map_pixels(torch.rand(1, 3, 8, 8))
    stats = torch.randn(1, 6, 8, 8)
    base = dvae_loss(x, stats, collapsed, kl_weight=0.0).loss
    with_usage = dvae_loss(x, stats, collapsed, kl_weight=0.0, usage_weight=6.6).loss
    # 4 latents of 16 pixels: (6.6 / 64 per pixel) * 16 pixels * log 4 nats each, per subpixel
    expected = 6.6 * 16 / 64 * 4 * math.log(vocab) / (3 * 64)
    assert (with_usage - base).item() == pytest.approx(expected, rel=1e-4)


def test_gaussian_likelihood_is_a_fixed_scale_normal_around_the_decoded_mean() -> None:
    x = map_pixels(torch.rand(2, 3, 4, 4))
    stats = torch.randn(2, 6, 4, 4)
    expected = -torch.distributions.Normal(torch.sigmoid(stats[:, :3]), 0.07).log_prob(x)
    assert torch.allclose(gaussian_nll(x, stats, 0.07), expected, atol=1e-5)
    logits = torch.randn(2, 32, 1, 1)
    out = dvae_loss(x, stats, logits, 6.6, likelihood="gaussian", pixel_std=0.07)
    # 16 pixels per latent: the KL weighs 6.6 * 16 / 64 per latent.
    total = gaussian_nll(x, stats, 0.07).sum() + 6.6 / 4 * kl_to_uniform(logits).sum()
    assert out.loss.item() == pytest.approx((total / (2 * 3 * 16)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="likelihood"):
        dvae_loss(x, stats, logits, 1.0, likelihood="laplace")
    with pytest.raises(ValueError, match=r"objective\.likelihood"):
        DVAEObjectiveConfig(likelihood="mse")


def test_straight_through_sample_is_one_hot_with_the_relaxed_gradient() -> None:
    logits = torch.randn(2, 16, 3, 3, requires_grad=True)
    hard = gumbel_softmax(logits, temperature=1.0, hard=True)
    assert torch.equal(hard.sum(dim=1), torch.ones(2, 3, 3))
    assert set(hard.detach().unique().tolist()) == {0.0, 1.0}
    (hard * torch.randn_like(hard)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_samples_follow_the_softmax() -> None:
    """Gumbel-max: the sample's argmax is distributed as softmax(logits), whatever the
    temperature (a wrong sign or scale of the noise shifts these frequencies)."""
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0]).view(1, 4, 1, 1).expand(20000, 4, 1, 1)
    for temperature in (1.0, 0.25):
        picks = gumbel_softmax(logits, temperature).argmax(dim=1).flatten()
        frequencies = torch.bincount(picks, minlength=4).float() / len(picks)
        assert torch.allclose(frequencies, logits[0, :, 0, 0].softmax(0), atol=0.015)


def test_decoder_can_start_at_the_background_colour() -> None:
    torch.manual_seed(0)
    model = DiscreteVAE(DVAE_PRESETS["dvae-tiny"])
    tokens = torch.randint(0, 128, (4, 8, 8))
    grey = model.decode(tokens).float()
    model.init_output_bias(torch.tensor([1.0, 1.0, 1.0]))
    white = model.decode(tokens).float()
    # The residual branches are still random, so not exactly white, but close to it.
    assert white.median() >= 250 and white.mean() > grey.mean() + 50
    head = model.decoder.blocks[-1]
    assert torch.allclose(head.bias[:3], torch.full((3,), math.log(0.9 / 0.1)))


def test_schedules_end_points() -> None:
    paper = DVAEObjectiveConfig()
    assert (paper.kl_weight, paper.kl_warmup_steps) == (6.6, 5000)
    assert (paper.temperature_start, paper.temperature_end, paper.temperature_steps) == (
        1.0,
        1 / 16,
        150_000,
    )
    assert cosine_anneal(0, 5000, 0.0, 6.6) == 0.0
    assert cosine_anneal(2500, 5000, 0.0, 6.6) == pytest.approx(3.3)
    assert cosine_anneal(5000, 5000, 0.0, 6.6) == 6.6
    assert cosine_anneal(10**6, 5000, 0.0, 6.6) == 6.6  # stays fixed afterwards
    assert cosine_anneal(0, 150_000, 1.0, 1 / 16) == 1.0
    assert cosine_anneal(150_000, 150_000, 1.0, 1 / 16) == 1 / 16
    values = [cosine_anneal(s, 100, 1.0, 0.0) for s in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert warmup_cosine(0, 10, 100, 1e-3, 1e-5) == pytest.approx(1e-4)
    assert warmup_cosine(9, 10, 100, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert warmup_cosine(100, 10, 100, 1e-3, 1e-5) == pytest.approx(1e-5)


def test_usage_weight_follows_the_kl_warm_up_unless_given_its_own() -> None:
    o = DVAEObjectiveConfig(kl_warmup_steps=600, usage_weight=1.0, temperature_steps=4000)
    kl, usage, temperature = objective_schedules(o, 300)
    assert (kl, usage) == (pytest.approx(3.3), pytest.approx(0.5))
    assert temperature == cosine_anneal(300, 4000, 1.0, 1 / 16)
    at_once = replace(o, usage_warmup_steps=0)
    assert objective_schedules(at_once, 0)[:2] == (0.0, 1.0)  # the KL still warms up
    assert objective_schedules(replace(o, usage_warmup_steps=100), 50)[1] == pytest.approx(0.5)
    assert objective_schedules(o, 10**6) == (6.6, 1.0, 1 / 16)
    with pytest.raises(ValueError, match="usage_warmup_steps"):
        DVAEObjectiveConfig(usage_warmup_steps=-1)


def test_save_and_load_pretrained(tmp_path: Path) -> None:
    model = DiscreteVAE(DVAE_PRESETS["dvae-tiny"]).eval()
    model.save_pretrained(tmp_path / "vae")
    assert {p.name for p in (tmp_path / "vae").iterdir()} == {"config.json", "model.safetensors"}
    loaded = DiscreteVAE.from_pretrained(tmp_path / "vae")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert loaded.config == model.config
    config = (tmp_path / "vae" / "config.json").read_text()
    (tmp_path / "vae" / "config.json").write_text(config.replace('"channels"', '"chanels"'))
    with pytest.raises(ValueError, match="chanels"):
        DiscreteVAE.from_pretrained(tmp_path / "vae")


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    model = DiscreteVAE(DVAE_PRESETS["dvae-tiny"])
    from dalle.data.datasets import ShapesWorldStream

    images = torch.stack(
        [s["image"] for _, s in zip(range(16), ShapesWorldStream(32, count=16), strict=False)]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_now() -> float:
        x = model.images_to_input(images)
        logits = model.encoder(x)
        out = dvae_loss(x, model.decoder(gumbel_softmax(logits, 1.0)), logits, kl_weight=0.0)
        return out.loss

    first = loss_now().item()
    for _ in range(30):
        optimizer.zero_grad()
        loss_now().backward()
        optimizer.step()
    assert loss_now().item() < first - 0.5


def test_the_edge_term_adds_the_mean_reconstructions_gradient_difference() -> None:
    from dalle.data.datasets import Batch, ShapesWorldStream
    from dalle.losses.reconstruction import gradient_difference
    from dalle.training.dvae_task import DVAETask, DVAETrainConfig

    def task_with(weight: float) -> DVAETask:
        objective = DVAEObjectiveConfig(gradient_weight=weight)
        config = DVAETrainConfig(preset="dvae-tiny", model=DVAE_PRESETS["dvae-tiny"],
                                 objective=objective)  # fmt: skip
        config.data = replace(config.data, image_size=32, batch_size=4)
        return DVAETask(config, torch.device("cpu"))

    stream = ShapesWorldStream(32, count=4)
    images = torch.stack([s["image"] for _, s in zip(range(4), stream, strict=False)])
    batch = Batch(images=images, captions=["x"] * 4, keys=[str(i) for i in range(4)], skipped=[])
    plain, edged = task_with(0.0), task_with(2.0)
    edged.model.load_state_dict(plain.model.state_dict())
    torch.manual_seed(0)  # the same Gumbel draw for both
    loss, _ = plain.training_loss(batch, 10.0)
    torch.manual_seed(0)
    with_edges, _ = edged.training_loss(batch, 10.0)
    torch.manual_seed(0)
    temperature = objective_schedules(DVAEObjectiveConfig(), 10.0)[2]
    _, _, stats = plain.model(images, lambda logits: gumbel_softmax(logits, temperature))
    edges = gradient_difference(plain.model.stats_to_images(stats), images.float() / 255)
    assert edges > 0
    torch.testing.assert_close(with_edges, loss + 2.0 * edges)
    with_edges.backward()  # the term reaches the decoder
    assert edged.model.decoder.blocks[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="gradient_weight"):
        DVAEObjectiveConfig(gradient_weight=-1.0)
