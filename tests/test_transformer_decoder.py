"""DALL-E 2's transformer decoder: the DALL-E transformer conditioned on CLIP image
embeddings; its conditioning, cached sampling, training, export, and the unCLIP pipeline
and demo on tiny models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dalle.cli import main
from dalle.models.dalle_transformer import DALLETransformer
from dalle.models.transformer_decoder import TRANSFORMER_DECODER_PRESETS, TransformerDecoder
from dalle.sampling.rerank import standardise
from dalle.sampling.sampler import SamplingConfig, sample_image_tokens
from dalle.sampling.unclip import UnCLIP
from dalle.training.decoder_task import TransformerDecoderTask
from dalle.training.stages import TRANSFORMER_DECODER
from serving_helpers import train_tiny_token_unclip

CONFIGS = Path(__file__).parent.parent / "configs"
TINY = TRANSFORMER_DECODER_PRESETS["transformer-decoder-tiny"]


def _decoder() -> TransformerDecoder:
    torch.manual_seed(0)
    return TransformerDecoder(TINY).eval()


def _inputs(rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = TINY
    text = torch.randint(1, c.text_vocab_size, (rows, c.text_len))
    image = torch.randint(0, c.image_vocab_size, (rows, c.image_tokens))
    return text, image, F.normalize(torch.randn(rows, c.embed_dim), dim=-1)


def test_the_decoder_reads_the_embedding_and_the_transformer_takes_none() -> None:
    decoder = _decoder()
    text, image, embed = _inputs(2)
    _, logits = decoder(text, image, image_embed=embed)
    assert logits.shape == (2, TINY.image_tokens, TINY.image_vocab_size)
    _, other = decoder(text, image, image_embed=F.normalize(torch.randn_like(embed), dim=-1))
    assert not torch.allclose(logits, other)  # the embedding matters
    _, dropped = decoder(text, image, image_embed=torch.zeros_like(embed))
    assert not torch.allclose(dropped, logits)
    with pytest.raises(ValueError, match="draws from CLIP image embeddings"):
        decoder(text, image)
    with pytest.raises(ValueError, match="must be"):
        decoder(text, image, image_embed=embed[:, :3])
    plain = DALLETransformer(replace(TINY))
    with pytest.raises(ValueError, match="takes no image embedding"):
        plain(text, image, image_embed=embed)


def test_the_embedding_goes_into_the_first_embed_tokens_inputs_only() -> None:
    torch.manual_seed(0)
    decoder = TransformerDecoder(replace(TINY, embed_tokens=3))
    text, _, embed = _inputs(2)
    h = decoder.embed_text(text, embed)  # [B, L + 1, C]
    other = decoder.embed_text(text, F.normalize(torch.randn_like(embed), dim=-1))
    changed = (h != other).any(dim=-1).any(dim=0)  # [L + 1]
    assert changed.tolist() == [True] * 3 + [False] * (TINY.text_len + 1 - 3)
    with pytest.raises(ValueError, match="embed_tokens must be in"):
        replace(TINY, embed_tokens=TINY.text_len + 2)
    # Through a mapping network, the same inputs and no others.
    mapped = TransformerDecoder(replace(TINY, embed_tokens=2, embed_hidden=16))
    h, other = (mapped.embed_text(text, e) for e in (embed, -embed))
    changed = (h != other).any(dim=-1).any(dim=0)
    assert changed.tolist() == [True] * 2 + [False] * (TINY.text_len - 1)
    with pytest.raises(ValueError, match="embed_hidden must be"):
        replace(TINY, embed_hidden=-1)


def test_its_transformer_weights_are_the_dalle_transformer_s_of_the_same_seed() -> None:
    """Adding the projection re-runs the initialisation; every weight has its own seed, so
    the transformer underneath is the one a DALL-E build of that seed gets."""
    torch.manual_seed(5)
    decoder = TransformerDecoder(TINY)
    torch.manual_seed(5)
    plain = DALLETransformer(TINY)
    mine = decoder.state_dict()
    for name, weight in plain.state_dict().items():
        assert torch.equal(mine[name], weight), name
    assert mine["image_embed_projection.weight"].std() > 0
    assert torch.equal(mine["image_embed_projection.bias"], torch.zeros(TINY.width))


def test_cached_sampling_follows_the_teacher_forced_logits() -> None:
    """Drawn at a near-zero temperature through the cache, each token is the argmax of
    the whole-sequence pass over the tokens before it, with the same embedding."""
    decoder = _decoder()
    text, _, embed = _inputs(3)
    cold = SamplingConfig(temperature=1e-4)
    tokens = sample_image_tokens(decoder, text, cold, image_embed=embed,
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    _, logits = decoder(text, tokens, image_embed=embed)
    assert torch.equal(logits.argmax(-1), tokens)
    # The embedding reaches the cached pass: the first token's logits move with it.
    first = [decoder(text, tokens[:, :0], cache=decoder.new_cache(3, text.device, torch.float32),
                     image_embed=e)[1] for e in (embed, -embed)]  # fmt: skip
    assert not torch.allclose(first[0], first[1])


def test_guided_sampling_mixes_in_the_dropped_embedding_and_caption() -> None:
    decoder = _decoder()
    text, _, embed = _inputs(2)

    def draw(scale: float) -> torch.Tensor:
        sampling = SamplingConfig(temperature=1e-4, guidance_scale=scale)
        return sample_image_tokens(decoder, text, sampling, image_embed=embed,
                                   generator=torch.Generator().manual_seed(0))  # fmt: skip

    assert not torch.equal(draw(1.0), draw(4.0))
    assert torch.equal(draw(4.0), draw(4.0))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A tiny CLIP and FSQ tokenizer, a prior, and a transformer decoder trained on them."""
    root = tmp_path_factory.mktemp("transformer-decoder")
    return train_tiny_token_unclip(root, CONFIGS / "transformer-decoder-tiny-cpu.yaml")


def test_train_decoder_with_a_transformer_preset_exports_it_and_its_tokenizers(trained) -> None:
    decoder = TransformerDecoder.from_pretrained(trained["decoder"])
    # fsq-tiny: 2x downsampling of 32-pixel images, levels 5 x 5.
    assert (decoder.config.image_grid, decoder.config.image_vocab_size) == (16, 25)
    assert (trained["decoder"] / "image_tokenizer" / "model.safetensors").exists()
    assert (trained["decoder"] / "clip" / "tokenizer" / "tokenizer.json").exists()
    metrics = (trained["decoder"] / "metrics.jsonl").read_text()
    assert '"decoded_judge_pass"' in metrics and '"val_loss"' in metrics
    # Not a DALL-E model: `dalle generate` refuses the folder by its recorded type.
    with pytest.raises(ValueError, match="holds a TransformerDecoder"):
        DALLETransformer.from_pretrained(trained["decoder"])


def test_transformer_decoder_training_resumes_exactly(trained, tmp_path) -> None:
    from interrupt import assert_resumes_exactly

    overrides = [f"clip={trained['clip']}", f"image_tokenizer={trained['fsq']}", "loop.steps=6",
                 "loop.checkpoint_every=2", "loop.eval_every=6", "eval.grid=2"]  # fmt: skip
    config = TRANSFORMER_DECODER.build_config(CONFIGS / "transformer-decoder-tiny-cpu.yaml",
                                              overrides)  # fmt: skip
    assert_resumes_exactly(config, TransformerDecoderTask, tmp_path)


def test_the_pipeline_draws_with_the_transformer_and_manipulates_images(trained) -> None:
    pipe = UnCLIP.from_pretrained(trained["decoder"], trained["prior"])
    assert isinstance(pipe.decoder, TransformerDecoder) and pipe.image_size == 32
    out = pipe(["a red circle"], 2, prior_num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.images.shape == (1, 2, 3, 32, 32) and out.images.dtype == torch.uint8
    first = out.images[0, 0]
    variations = pipe.variations(first, num_images=2, generator=torch.Generator().manual_seed(1))
    assert variations.shape == (2, 3, 32, 32)
    path = pipe.interpolate(first, first, num_images=3)
    # One image's embedding at every weight, and one seed for every image: one picture.
    assert torch.equal(path[0], path[1]) and torch.equal(path[0], path[2])
    diff = pipe.text_diff(first, "a red circle", "a blue circle", num_images=2)
    assert diff.shape == (2, 3, 32, 32)
    # Candidates, ranked by the CLIP: of 6 draws, the 2 whose CLIP embeddings are closest
    # to the source's.
    drawn = pipe.variations(first, num_images=6, generator=torch.Generator().manual_seed(2))
    kept = pipe.variations(first, num_images=2, candidates=6, rank="clip",
                           generator=torch.Generator().manual_seed(2))  # fmt: skip
    embeds = pipe.encode_image(drawn)
    closeness = (embeds * pipe.encode_image(first[None])).sum(-1)
    assert torch.equal(kept, drawn[closeness.argsort(descending=True, stable=True)[:2]])
    # Without a caption "auto" ranks by the CLIP alone too.
    auto = pipe.variations(first, num_images=2, candidates=6,
                           generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert torch.equal(kept, auto)
    # "clip+likelihood": also by the decoder's likelihood of each draw given the caption
    # (none here) and its own embedding, each standardised: the two added.
    tokens = pipe.image_tokenizer.encode(drawn).flatten(1)
    likelihood = pipe.image_log_likelihood(pipe.no_caption(6), tokens, embeds)
    assert torch.allclose(likelihood[:1], pipe.caption_log_likelihood(tokens[0], embeds[0], [""]),
                          rtol=1e-3)  # fmt: skip
    both = standardise(closeness) + standardise(likelihood)
    kept = pipe.variations(first, num_images=2, candidates=6, rank="clip+likelihood",
                           generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert torch.equal(kept, drawn[both.argsort(descending=True, stable=True)[:2]])
    assert pipe.ranking() == "clip+likelihood" and pipe.ranking(caption=False) == "clip"
    with pytest.raises(ValueError, match="rank must be"):
        pipe.variations(first, num_images=2, candidates=6, rank="judge")
    pipe.decoder_temperature = 1e-4  # near argmax: the generator no longer matters
    cold = [pipe.variations(first, num_images=1, generator=torch.Generator().manual_seed(s))
            for s in (0, 1)]  # fmt: skip
    assert torch.equal(cold[0], cold[1])


def test_the_decoder_reads_a_caption_it_finds_likelier_than_every_known_one(trained) -> None:
    pipe = UnCLIP.from_pretrained(trained["decoder"])
    known = ["a red circle", "a blue circle", "a blue square", "a red circle in the top left"]
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert pipe.reader() == "decoder"
    read = pipe.describe(images, known, shortlist=len(known))
    tokens, embeds = pipe.image_tokenizer.encode(images).flatten(1), pipe.encode_image(images)
    for row, caption in enumerate(read):
        fits = pipe.caption_log_likelihood(tokens[row], embeds[row], [caption, *known])
        assert torch.isfinite(fits).all() and (fits < 0).all()
        assert fits[0] >= fits[1:].max() - 1e-4  # the search never ends below its start
    by_clip = pipe.describe(images, known, reader="clip")
    assert all(set(c.split()) <= {w for k in known for w in k.split()} for c in by_clip)
    with pytest.raises(ValueError, match="reader must be"):
        pipe.describe(images, known, reader="judge")


def test_the_unclip_demo_draws_with_a_transformer_decoder_by_default(tmp_path, capsys) -> None:
    out = tmp_path / "demo-unclip"
    args = ["demo", "--pipeline", "unclip", "--smoke", "--out", str(out)]
    assert main(args) == 0
    assert TransformerDecoder.from_pretrained(out / "decoder").config.image_grid == 8
    assert len(list((out / "seen").glob("*.png"))) == 4
    # A folder holding another kind of decoder is refused, not reused in silence.
    capsys.readouterr()
    assert main([*args, "--decoder", "latent"]) == 2
    assert "holds a decoder of another kind (transformer-decoder-small" in capsys.readouterr().err


def test_the_demo_samples_a_transformer_decoder_as_the_dalle_demo() -> None:
    """32 draws per prompt at the DALL-E demo's temperature and guidance, the prior in 8
    steps; the other decoders keep their own settings."""
    from dalle.demo import DemoConfig
    from dalle.demo_unclip import cpu_unclip_config

    c = cpu_unclip_config(DemoConfig(), None, "transformer")
    assert (c.candidates, c.decoder_temperature, c.decoder_guidance, c.prior_steps) == (
        32, 0.5, 2.0, 8)  # fmt: skip
    latent = cpu_unclip_config(DemoConfig(), None, "latent")
    assert (latent.candidates, latent.decoder_temperature, latent.prior_steps) == (4, 1.0, 32)
