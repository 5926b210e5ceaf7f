"""DALL-E 2's decoder and the unCLIP pipeline on tiny models: conditioning and guidance,
training with exact resume, and text to image, variations, interpolation and text diffs
from the command line."""

from __future__ import annotations

import filecmp
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dalle.cli import main
from dalle.models.decoder import DECODER_PRESETS, DecoderConfig, ImageDecoder
from dalle.models.dvae import DVAE_PRESETS, DiscreteVAE
from dalle.sampling.diffusion import sample_images
from dalle.sampling.unclip import UnCLIP, slerp
from dalle.training.decoder_task import DecoderTask
from dalle.training.stages import DECODER
from serving_helpers import make_tiny_models

CONFIGS = Path(__file__).parent.parent / "configs"


def _decoder() -> ImageDecoder:
    torch.manual_seed(0)
    decoder = ImageDecoder(DECODER_PRESETS["decoder-tiny"]).eval()
    torch.nn.init.normal_(decoder.unet.conv_out.weight, std=0.1)  # it starts at zero
    return decoder


def test_the_decoder_reads_the_embedding_the_caption_and_their_null_stand_ins() -> None:
    decoder, c = _decoder(), DECODER_PRESETS["decoder-tiny"]
    assert torch.count_nonzero(ImageDecoder(c).unet.conv_out.weight) == 0
    x, t = torch.randn(3, 3, c.image_size, c.image_size), torch.tensor([0, 40, 99])
    text = torch.randint(2, c.text_vocab_size, (3, c.text_len))
    embed = F.normalize(torch.randn(3, c.embed_dim), dim=-1)
    out = decoder(x, t, text, embed)
    assert out.shape == x.shape
    assert not torch.allclose(decoder(x, t, text, embed.roll(1, 0)), out)  # the embedding
    assert not torch.allclose(decoder(x, t, text.roll(1, 0), embed), out)  # the caption
    every = torch.ones(3, dtype=torch.bool)
    neither = decoder(x, t, text, embed, drop_text=every, drop_image=every)
    other = decoder(x, t, text.roll(1, 0), embed.roll(1, 0), drop_text=every, drop_image=every)
    assert torch.allclose(neither, other, atol=1e-6) and torch.isfinite(neither).all()


def test_sampled_images_and_guidance() -> None:
    decoder, c = _decoder(), DECODER_PRESETS["decoder-tiny"]
    text = torch.randint(2, c.text_vocab_size, (2, c.text_len))
    embed = F.normalize(torch.randn(2, c.embed_dim), dim=-1)

    def draw(scale: float) -> torch.Tensor:
        return sample_images(decoder, text, embed, steps=4, guidance_scale=scale,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip

    images = draw(3.0)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, c.image_size, c.image_size)
    assert torch.equal(images, draw(3.0)) and not torch.equal(images, draw(1.0))


def test_slerp() -> None:
    a, b = F.normalize(torch.randn(2, 8), dim=-1)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    middle = slerp(a, b, 0.5)
    assert torch.allclose(middle.norm(), torch.tensor(1.0))
    assert torch.allclose(middle @ a, middle @ b, atol=1e-5)


def test_the_config_checks_its_levels() -> None:
    with pytest.raises(ValueError, match="one entry per level"):
        DecoderConfig(channels=[8, 16], attention=[True])
    with pytest.raises(ValueError, match="halve"):
        DecoderConfig(image_size=10, channels=[8, 16, 32], attention=[False] * 3, norm_groups=4,
                      head_dim=8)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A tiny CLIP, and a prior and a decoder trained on it (a few updates each)."""
    root = tmp_path_factory.mktemp("unclip")
    clip = make_tiny_models(root)[1]
    prior, decoder = root / "prior", root / "decoder"
    assert main(["train-prior", "--config", str(CONFIGS / "prior-tiny-cpu.yaml"), "--clip",
                 str(clip), "--out", str(prior)]) == 0  # fmt: skip
    assert main(["train-decoder", "--config", str(CONFIGS / "decoder-tiny-cpu.yaml"), "--clip",
                 str(clip), "--out", str(decoder)]) == 0  # fmt: skip
    return {"root": root, "clip": clip, "prior": prior, "decoder": decoder}


def test_train_decoder_exports_the_model_its_clip_and_judged_decodings(trained) -> None:
    decoder = ImageDecoder.from_pretrained(trained["decoder"])
    assert decoder.config.image_size == 32 and decoder.config.embed_dim == 16
    assert (trained["decoder"] / "clip" / "tokenizer" / "tokenizer.json").exists()
    metrics = (trained["decoder"] / "metrics.jsonl").read_text()
    assert '"decoded_judge_pass"' in metrics and '"val_loss"' in metrics
    assert list((trained["decoder"] / "samples").glob("decoded-*.png"))


def test_decoder_training_resumes_exactly(trained, tmp_path) -> None:
    from interrupt import assert_resumes_exactly

    overrides = [f"clip={trained['clip']}", "loop.steps=6", "loop.checkpoint_every=2",
                 "loop.eval_every=6", "data.batch_size=4", "eval.grid=2"]  # fmt: skip
    config = DECODER.build_config(CONFIGS / "decoder-tiny-cpu.yaml", overrides)
    assert_resumes_exactly(config, DecoderTask, tmp_path)


def test_text_to_image_and_the_manipulations_from_the_command_line(trained, tmp_path) -> None:
    fast = ["--prior-steps", "4", "--decoder-steps", "4"]
    out_dir = tmp_path / "drawn"
    args = ["unclip", "a red circle", "a blue star", "--prior", str(trained["prior"]),
            "--decoder", str(trained["decoder"]), "--num", "3", "--keep", "2",
            "--out-dir", str(out_dir), "--out", str(tmp_path / "grid.png"), *fast]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in out_dir.iterdir())[:2] == ["0000.png", "0000.txt"]
    assert (
        len(list(out_dir.glob("*.png"))) == 4
        and (out_dir / "0003.txt").read_text() == "a blue star"
    )
    source = out_dir / "0000.png"
    decoder = ["--decoder", str(trained["decoder"]), "--decoder-steps", "4"]
    cases = {"variations": [str(source), "--num", "3"],
             "interpolate": [str(source), str(out_dir / "0002.png"), "--num", "4"],
             "text-diff": [str(source), "--source", "a red circle", "--target", "a blue circle",
                           "--num", "3"]}  # fmt: skip
    for command, args in cases.items():
        grid = tmp_path / f"{command}.png"
        assert main([command, *args, *decoder, "--out", str(grid)]) == 0
        with Image.open(grid) as image:
            assert image.width > 3 * 32, command


def test_a_prior_and_a_decoder_of_different_clips_are_refused(trained, tmp_path) -> None:
    other = tmp_path / "other-prior"
    shutil.copytree(trained["prior"], other)
    clip = UnCLIP.from_pretrained(trained["decoder"]).clip
    with torch.no_grad():
        clip.logit_scale.add_(1.0)
    clip.save_pretrained(other / "clip")
    with pytest.raises(ValueError, match="different CLIPs"):
        UnCLIP.from_pretrained(trained["decoder"], other)


def test_the_unclip_demo_runs_every_stage_and_judges(tmp_path, capsys) -> None:
    out = tmp_path / "demo-unclip"
    args = ["demo", "--pipeline", "unclip", "--decoder", "latent", "--smoke"]
    assert main([*args, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for split in ("seen", "zeroshot"):
        assert results[split]["images"] == 4 and "accuracy_without_reranking" in results[split]
        assert len(list((out / split).glob("*.png"))) == 4
    assert "image_cosine" in results["prior"] and "decoded_judge_pass" in results["decoder"]
    # A second run reuses every finished stage.
    assert main([*args, "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("reusing the finished stage") >= 4
    # --reuse copies another demo's finished BPE, image tokenizer and CLIP.
    other = tmp_path / "other"
    assert main([*args, "--reuse", str(out), "--out", str(other)]) == 0
    printed = capsys.readouterr().out
    for name in ("tokenizer", "image_tokenizer", "clip"):
        assert f"[demo] {name}: the DALL-E demo's ({out / name})" in printed
        kept = "tokenizer.json" if name == "tokenizer" else "model.safetensors"
        assert filecmp.cmp(out / name / kept, other / name / kept, shallow=False)


def test_the_gpu_profile_gives_prior_and_decoder_the_transformer_s_minutes(tmp_path) -> None:
    """`--profile gpu` for unCLIP: large batches, schedules on the clock, 2 + 5 minutes (the
    GPU demo transformer's 7), 32 draws per prompt; the transformer and latent decoders
    are sized, the transformer at the GPU DALL-E transformer's shape."""
    from dalle.demo import demo_training_minutes, gpu_config, stage_configs
    from dalle.demo_unclip import gpu_unclip_config

    base = gpu_config()
    transformer = stage_configs(base, tmp_path)["dalle"][1]
    assert demo_training_minutes(base) == 10  # tokenizer beside the CLIP, then 7
    for kind in ("transformer", "latent"):
        c = gpu_unclip_config(base, None, kind)
        configs = configs_of(c, tmp_path / kind)
        minutes = sum(settings.loop.max_minutes for settings in configs.values())
        assert minutes == transformer.loop.max_minutes == 7
        for settings in configs.values():
            assert settings.loop.schedule_clock == "time" and settings.data.batch_size == 256
        assert c.candidates == base.candidates == 32 and c.batch_size == 512
    decoder = configs_of(gpu_unclip_config(base, None, "transformer"), tmp_path)["decoder"]
    assert (decoder.model.width, decoder.model.layers) == (
        transformer.model.width,
        transformer.model.layers,
    )
    assert gpu_unclip_config(base, None, "transformer").decoder_temperature == 0.5
    with pytest.raises(ValueError, match="sizes the transformer and latent decoders"):
        gpu_unclip_config(base, None, "tokens")


def configs_of(c, out: Path) -> dict:
    """The prior's and the decoder's training settings of an unCLIP demo config."""
    from dalle.demo_unclip import _diffusion_configs

    return {name: settings for name, (_, settings) in _diffusion_configs(c, out).items()}


def test_an_upsampler_enlarges_the_pipeline_s_images(trained, tmp_path) -> None:
    """A 32 -> 64 upsampler after the 32-pixel decoder: text to image and variations come
    back at 64 pixels (ranked at the CLIP's 32), from Python and the command line; an
    upsampler for another input size is refused."""
    upsampler = tmp_path / "upsampler"
    assert main(["train-upsampler", "--config", str(CONFIGS / "upsampler-tiny-cpu.yaml"),
                 "--out", str(upsampler), "data.image_size=64", "loop.steps=2",
                 "loop.eval_every=2", "eval.samples=4", "eval.grid=2"]) == 0  # fmt: skip
    pipe = UnCLIP.from_pretrained(trained["decoder"], trained["prior"], upsampler=upsampler)
    pipe.upsampler_steps = 2
    assert (pipe.image_size, pipe.output_size) == (32, 64)
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    out = pipe(["a red circle", "a blue star"], 2, keep=1, prior_num_inference_steps=2,
               decoder_num_inference_steps=2, generator=generators)  # fmt: skip
    assert out.images.shape == (2, 1, 3, 64, 64) and out.scores.shape == (2, 1)
    variations = pipe.variations(out.images[0, 0, :, ::2, ::2], num_images=2, steps=2)
    assert variations.shape == (2, 3, 64, 64)
    out_dir = tmp_path / "drawn"
    assert main(["unclip", "a red circle", "--prior", str(trained["prior"]), "--decoder",
                 str(trained["decoder"]), "--upsampler", str(upsampler), "--num", "1",
                 "--prior-steps", "2", "--decoder-steps", "2", "--upsampler-steps", "2",
                 "--out-dir", str(out_dir), "--out", str(tmp_path / "grid.png")]) == 0  # fmt: skip
    with Image.open(out_dir / "0000.png") as image:
        assert image.size == (64, 64)
    wrong = tmp_path / "wrong"
    assert main(["train-upsampler", "--config", str(CONFIGS / "upsampler-tiny-cpu.yaml"),
                 "--out", str(wrong), "loop.steps=1", "loop.eval_every=1", "eval.samples=2",
                 "eval.grid=1"]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="enlarges 8-pixel images"):
        UnCLIP.from_pretrained(trained["decoder"], upsampler=wrong)


def test_a_decoder_smaller_than_the_data_trains_on_shrunk_images(trained) -> None:
    """``image_size`` below the data's: the decoder diffuses images shrunk to its size
    while the CLIP embeds them at the data's; a size that does not divide it is refused."""
    overrides = [f"clip={trained['clip']}", "image_size=16", "eval.samples=4"]
    config = DECODER.build_config(CONFIGS / "decoder-tiny-cpu.yaml", overrides)
    task = DecoderTask(config, torch.device("cpu"))
    assert task.model.config.image_size == 16 and config.data.image_size == 32
    images = task.eval_images[:2]
    shrunk = task.at_decoder_size(images)
    assert shrunk.shape == (2, 3, 16, 16) and shrunk.dtype == torch.uint8
    expected = F.avg_pool2d(images.float(), 2).round()
    assert torch.equal(shrunk.float(), expected)
    text = task.tokenizer.encode(task.eval_captions[:2]).ids
    assert torch.isfinite(task.loss(images, text, task.image_embeddings(images)))
    bad = DECODER.build_config(CONFIGS / "decoder-tiny-cpu.yaml", [*overrides[:1], "image_size=12"])
    with pytest.raises(ValueError, match="must divide"):
        DecoderTask(bad, torch.device("cpu"))


def test_a_latent_decoder_draws_the_image_tokenizer_s_codes(trained, tmp_path) -> None:
    """Given an FSQ tokenizer, the decoder diffuses its code grid (16x16 of 2 channels for
    32-pixel images), exports the tokenizer beside the CLIP (also through
    export-checkpoint), and the pipeline turns what it draws into pixels at the data's
    size; a dVAE, whose codes are one-hot, is refused."""
    tokenizer_dir = trained["root"] / "dalle" / "image_tokenizer"
    decoder = tmp_path / "latent"
    assert main(["train-decoder", "--config", str(CONFIGS / "decoder-tiny-cpu.yaml"),
                 "--clip", str(trained["clip"]), "--out", str(decoder),
                 f"image_tokenizer={tokenizer_dir}", "loop.steps=4", "loop.eval_every=4",
                 "eval.grid=2"]) == 0  # fmt: skip
    model = ImageDecoder.from_pretrained(decoder)
    assert (model.config.image_size, model.config.image_channels) == (16, 2)
    assert (decoder / "image_tokenizer" / "model.safetensors").exists()
    assert '"decoded_judge_pass"' in (decoder / "metrics.jsonl").read_text()
    exported = tmp_path / "exported"
    assert main(["export-checkpoint", str(decoder), "--out", str(exported)]) == 0
    assert (exported / "image_tokenizer" / "model.safetensors").exists()

    pipe = UnCLIP.from_pretrained(decoder, trained["prior"])
    assert pipe.image_size == 32 and pipe.image_tokenizer is not None
    out = pipe(["a red circle"], 2, prior_num_inference_steps=2, decoder_num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.images.shape == (1, 2, 3, 32, 32) and out.images.dtype == torch.uint8
    first = out.images[0, 0]
    assert pipe.variations(first, num_images=2, steps=2).shape == (2, 3, 32, 32)
    assert pipe.interpolate(first, out.images[0, 1], num_images=3, steps=2).shape == (3, 3, 32, 32)

    config = DECODER.build_config(CONFIGS / "decoder-tiny-cpu.yaml",
                                  [f"clip={trained['clip']}", f"image_tokenizer={tokenizer_dir}",
                                   "eval.samples=4"])  # fmt: skip
    task = DecoderTask(config, torch.device("cpu"))
    images, codec = task.eval_images[:2], task.image_tokenizer
    expected = codec.decode(codec.encode(images))
    assert torch.equal(codec.decode_codes(task.diffused(images)), expected)

    dvae = tmp_path / "dvae"
    DiscreteVAE(DVAE_PRESETS["dvae-tiny"]).save_pretrained(dvae)
    with pytest.raises(ValueError, match="needs an FSQ"):
        DecoderTask(replace(config, image_tokenizer=str(dvae)), torch.device("cpu"))
