"""DALL-E 2's masked-token decoder: the masking schedule and its loss, the model's
conditioning, sampling, and training, export and the unCLIP pipeline on tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dalle.cli import main
from dalle.losses.diffusion import masked_token_loss
from dalle.models.token_decoder import TOKEN_DECODER_PRESETS, TokenDecoder
from dalle.sampling.masked import mask_tokens, masking_ratio, sample_tokens
from dalle.sampling.unclip import UnCLIP
from dalle.training.decoder_task import TokenDecoderTask
from dalle.training.stages import TOKEN_DECODER
from serving_helpers import train_tiny_token_unclip

CONFIGS = Path(__file__).parent.parent / "configs"
TINY = TOKEN_DECODER_PRESETS["token-decoder-tiny"]


def test_the_masking_schedule_runs_from_all_to_none() -> None:
    ratios = masking_ratio(torch.tensor([0.0, 0.5, 1.0]))
    assert ratios[0] == 1 and abs(ratios[1] - math.cos(math.pi / 4)) < 1e-6
    assert abs(ratios[2]) < 1e-6


def test_mask_tokens_masks_a_cosine_share_and_never_nothing() -> None:
    tokens = torch.randint(0, 25, (4000, 4, 4))
    corrupted, masked = mask_tokens(tokens, 25, torch.Generator().manual_seed(0))
    assert torch.equal(corrupted[masked], torch.full_like(corrupted[masked], 25))
    assert torch.equal(corrupted[~masked], tokens[~masked])
    assert masked.flatten(1).any(dim=1).all()  # at least one position in every image
    # E[cos(u pi / 2)] over u ~ U(0, 1) is 2 / pi (plus the one forced position).
    assert abs(masked.float().mean().item() - 2 / math.pi) < 0.02
    again, _ = mask_tokens(tokens, 25, torch.Generator().manual_seed(0))
    assert torch.equal(again, corrupted)


def test_the_loss_reads_only_masked_positions() -> None:
    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 25, 4, 4), torch.randint(0, 25, (2, 4, 4))
    masked = torch.zeros(2, 4, 4, dtype=torch.bool)
    masked[0, 1, 2] = masked[1, 3, 0] = True
    expected = F.cross_entropy(torch.stack([logits[0, :, 1, 2], logits[1, :, 3, 0]]),
                               torch.stack([tokens[0, 1, 2], tokens[1, 3, 0]]))  # fmt: skip
    assert torch.allclose(masked_token_loss(logits, tokens, masked), expected)
    changed = logits.clone()
    changed[0, :, 0, 0] += 5  # an unmasked position
    assert torch.equal(masked_token_loss(changed, tokens, masked),
                       masked_token_loss(logits, tokens, masked))  # fmt: skip


def _decoder() -> TokenDecoder:
    torch.manual_seed(0)
    return TokenDecoder(TINY).eval()


def test_the_decoder_reads_the_embedding_the_caption_and_their_null_stand_ins() -> None:
    decoder, c = _decoder(), TINY
    tokens = torch.full((2, c.image_size, c.image_size), c.mask_id)
    text = torch.randint(1, c.text_vocab_size, (2, c.text_len))
    embed = F.normalize(torch.randn(2, c.embed_dim), dim=-1)
    logits = decoder(tokens, text, embed)
    assert logits.shape == (2, c.image_vocab_size, c.image_size, c.image_size)
    other = decoder(tokens, text, F.normalize(torch.randn(2, c.embed_dim), dim=-1))
    assert not torch.allclose(logits, other)  # the embedding matters
    dropped = torch.tensor([True, False])
    both = decoder(tokens, text, embed, drop_image=dropped)
    assert not torch.allclose(both[0], logits[0]) and torch.allclose(both[1], logits[1])
    no_text = decoder(tokens, text, embed, drop_text=torch.tensor([True, True]))
    assert not torch.allclose(no_text, logits)


def test_built_on_meta_and_initialised_it_has_the_direct_build_s_weights() -> None:
    torch.manual_seed(3)
    direct = TokenDecoder(TINY)
    torch.manual_seed(3)
    with torch.device("meta"):
        late = TokenDecoder(TINY)
    late.to_empty(device="cpu")
    late.init_weights()
    for (name, a), (_, b) in zip(direct.state_dict().items(), late.state_dict().items(),
                                 strict=True):  # fmt: skip
        assert torch.equal(a, b), name


def test_sampling_unmasks_every_position_and_rows_keep_their_own_draws() -> None:
    decoder, c = _decoder(), TINY
    text = torch.randint(1, c.text_vocab_size, (3, c.text_len))
    embed = F.normalize(torch.randn(3, c.embed_dim), dim=-1)
    steps = []
    tokens = sample_tokens(decoder, text, embed, steps=4, guidance_scale=2.0,
                           generator=torch.Generator().manual_seed(0),
                           on_step=steps.append)  # fmt: skip
    assert tokens.shape == (3, c.image_size, c.image_size) and steps == [0, 1, 2, 3]
    assert (tokens < c.image_vocab_size).all() and (tokens >= 0).all()
    alone = sample_tokens(decoder, text[1:2], embed[1:2], steps=4,
                          generator=[torch.Generator().manual_seed(7)])  # fmt: skip
    generators = [torch.Generator().manual_seed(s) for s in (1, 7, 2)]
    beside = sample_tokens(decoder, text, embed, steps=4, generator=generators)
    assert torch.equal(alone[0], beside[1])


def test_a_cold_temperature_draws_the_most_likely_tokens() -> None:
    """Near zero temperature and without noise on the confidences, sampling no longer
    depends on the generator; at temperature 1 it does."""
    decoder, c = _decoder(), TINY
    text = torch.randint(1, c.text_vocab_size, (4, c.text_len))
    embed = F.normalize(torch.randn(4, c.embed_dim), dim=-1)

    def draw(seed: int, temperature: float) -> torch.Tensor:
        return sample_tokens(decoder, text, embed, steps=4, temperature=temperature,
                             confidence_noise=(0.0, 0.0),
                             generator=torch.Generator().manual_seed(seed))  # fmt: skip

    assert torch.equal(draw(0, 1e-4), draw(1, 1e-4))
    assert not torch.equal(draw(0, 1.0), draw(1, 1.0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A tiny CLIP and FSQ tokenizer, a prior, and a token decoder trained on them."""
    root = tmp_path_factory.mktemp("token-decoder")
    return train_tiny_token_unclip(root, CONFIGS / "token-decoder-tiny-cpu.yaml")


def test_train_decoder_with_a_token_preset_exports_the_model_and_its_tokenizer(trained) -> None:
    decoder = TokenDecoder.from_pretrained(trained["decoder"])
    # fsq-tiny: 2x downsampling of 32-pixel images, levels 5 x 5.
    assert (decoder.config.image_size, decoder.config.image_vocab_size) == (16, 25)
    assert (trained["decoder"] / "image_tokenizer" / "model.safetensors").exists()
    assert (trained["decoder"] / "clip" / "tokenizer" / "tokenizer.json").exists()
    metrics = (trained["decoder"] / "metrics.jsonl").read_text()
    assert '"decoded_judge_pass"' in metrics and '"val_loss"' in metrics


def test_token_decoder_training_resumes_exactly(trained, tmp_path) -> None:
    from interrupt import assert_resumes_exactly

    overrides = [f"clip={trained['clip']}", f"image_tokenizer={trained['fsq']}", "loop.steps=6",
                 "loop.checkpoint_every=2", "loop.eval_every=6", "data.batch_size=4",
                 "eval.grid=2"]  # fmt: skip
    config = TOKEN_DECODER.build_config(CONFIGS / "token-decoder-tiny-cpu.yaml", overrides)
    assert_resumes_exactly(config, TokenDecoderTask, tmp_path)


def test_the_pipeline_draws_tokens_and_manipulates_images(trained) -> None:
    pipe = UnCLIP.from_pretrained(trained["decoder"], trained["prior"])
    assert isinstance(pipe.decoder, TokenDecoder) and pipe.image_size == 32
    out = pipe(["a red circle"], 2, prior_num_inference_steps=2, decoder_num_inference_steps=3,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.images.shape == (1, 2, 3, 32, 32) and out.images.dtype == torch.uint8
    first = out.images[0, 0]
    assert pipe.variations(first, num_images=2, steps=3).shape == (2, 3, 32, 32)
    path = pipe.interpolate(first, out.images[0, 1], num_images=3, steps=3)
    assert path.shape == (3, 3, 32, 32)
    diff = pipe.text_diff(first, "a red circle", "a blue circle", num_images=2, steps=3)
    assert diff.shape == (2, 3, 32, 32)


def test_the_unclip_demo_draws_tokens(tmp_path) -> None:
    out = tmp_path / "demo-unclip"
    args = ["demo", "--pipeline", "unclip", "--decoder", "tokens", "--smoke", "--out", str(out)]
    assert main(args) == 0
    assert TokenDecoder.from_pretrained(out / "decoder").config.image_size == 8
    assert len(list((out / "seen").glob("*.png"))) == 4


def test_a_token_decoder_needs_an_image_tokenizer(trained, tmp_path, capsys) -> None:
    args = ["train-decoder", "--config", str(CONFIGS / "token-decoder-tiny-cpu.yaml"),
            "--clip", str(trained["clip"]), "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    # A pixel decoder's setting is refused, not ignored.
    assert main([*args[:-1], str(tmp_path / "sized"), f"image_tokenizer={trained['fsq']}",
                 "image_size=32"]) == 2  # fmt: skip
    assert "image_size 32 is a pixel decoder's setting" in capsys.readouterr().err
