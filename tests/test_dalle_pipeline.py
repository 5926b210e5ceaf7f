"""The transformer commands end to end on tiny models: train, export, generate, judge."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from dalle.cli import main
from dalle.models.dalle_transformer import DALLETransformer
from dalle.models.protocol import weight_decay_groups
from dalle.tokenizers.text import PAD_ID
from dalle.training.dalle_task import DALLETask
from dalle.training.stages import TRANSFORMER

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    vae, tok = root / "vae", root / "tok"
    assert (
        main(
            [
                "train-vae",
                "--config",
                str(CONFIGS / "dvae-tiny-cpu.yaml"),
                "--out",
                str(vae),
                "loop.steps=10",
                "loop.eval_every=10",
                "eval.samples=8",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--config",
                str(CONFIGS / "tokenizer-shapes.yaml"),
                "--out",
                str(tok),
                "tokenizer.max_captions=1000",
                "tokenizer.max_length=24",
            ]
        )
        == 0
    )
    return {"root": root, "vae": vae, "tokenizer": tok}


@pytest.fixture(scope="module")
def trained(stages: dict[str, Path]) -> tuple[Path, str]:
    """The tiny transformer trained once for this module's tests, and what training
    printed. Every test that needs it asks for it, so none depends on test order."""
    run = stages["root"] / "run"
    args = ["train", "--config", str(CONFIGS / "dalle-tiny-cpu.yaml"), "--vae",
            str(stages["vae"]), "--tokenizer", str(stages["tokenizer"]),
            "--out", str(run)]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return run, printed.getvalue()


def test_train_exports_a_self_contained_model(
    stages: dict[str, Path], trained: tuple[Path, str], capsys
) -> None:
    run, printed = trained
    assert "val_loss" in printed
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer",
        "image_tokenizer",
        "samples",
        "checkpoint.pt",
    } <= {p.name for p in run.iterdir()}
    model = DALLETransformer.from_pretrained(run)
    # Vocabularies, caption length and grid come from the tokenizer and dVAE.
    assert model.config.text_len == 24 and model.config.image_grid == 16
    assert model.config.image_vocab_size == 128
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"val_loss", "val_text_loss", "val_image_loss"} <= set(
        next(r["eval"] for r in records if "eval" in r)
    )
    assert (run / "samples" / "samples-0000020.png").exists()

    out_dir = stages["root"] / "generated"
    prompts = stages["root"] / "prompts.txt"
    prompts.write_text("a red circle\n\na small blue star in the top left\n")
    assert (
        main(
            [
                "generate",
                "--prompts",
                str(prompts),
                "a green cross",
                "--model",
                str(run),
                "--num",
                "2",
                "--out",
                str(stages["root"] / "grid.png"),
                "--out-dir",
                str(out_dir),
                "--top-k",
                "4",
            ]
        )
        == 0
    )
    texts = sorted(out_dir.glob("*.txt"))
    assert len(texts) == 6 and len(list(out_dir.glob("*.png"))) == 6
    assert (
        texts[0].read_text() == "a green cross"
        and texts[-1].read_text() == "a small blue star in the top left"
    )
    assert main(["judge", str(out_dir), "--json"]) == 0  # the judge reads what generate wrote
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n") :])["images"] == 6


def test_weight_decay_spares_gains_biases_and_embeddings(stages: dict[str, Path]) -> None:
    config = TRANSFORMER.build_config(
        CONFIGS / "dalle-tiny-cpu.yaml",
        [f"image_tokenizer={stages['vae']}", f"tokenizer={stages['tokenizer']}"],
    )
    task = DALLETask(config, torch.device("cpu"))
    decay, no_decay = weight_decay_groups(task.model, 0.045)
    assert decay["weight_decay"] == 0.045 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    model = task.model
    assert id(model.text_embedding.weight) not in decayed and id(model.start) not in decayed
    assert id(model.blocks[0].norm_attention.weight) not in decayed
    assert id(model.blocks[0].attention.qkv.bias) not in decayed
    assert id(model.blocks[0].attention.qkv.weight) in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_resume_is_exact_with_bpe_and_caption_dropout(stages: dict[str, Path]) -> None:
    from interrupt import assert_resumes_exactly

    overrides = [
        f"image_tokenizer={stages['vae']}", f"tokenizer={stages['tokenizer']}", "bpe_dropout=0.3",
        "caption_dropout=0.3", "loop.steps=6", "loop.checkpoint_every=2", "loop.eval_every=6",
        "eval.samples=4", "eval.grid=2", "data.batch_size=4",
    ]  # fmt: skip
    config = TRANSFORMER.build_config(CONFIGS / "dalle-tiny-cpu.yaml", overrides)
    root = stages["root"] / "resume"
    assert_resumes_exactly(config, DALLETask, root)


def test_train_needs_a_vae_and_tokenizer(tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert "'image_tokenizer' is required" in capsys.readouterr().err


def test_score_prints_bits_per_dimension(
    stages: dict[str, Path], trained: tuple[Path, str], capsys
) -> None:
    run = trained[0]
    from PIL import Image

    from dalle.data.shapes_world import render_scene, sample_scene

    scene = sample_scene(0, 3, 32)
    path = stages["root"] / "scene.png"
    Image.fromarray(render_scene(scene)).save(path)
    assert main(["score", str(path), scene.caption, "--model", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # An untrained-ish model: about log2(128) = 7 bits per token; 256 tokens over 3 * 32 * 32 dims.
    assert 3 < result["bits_per_token"] < 10
    assert result["bits_per_dim"] == pytest.approx(result["bits_per_token"] * 256 / (3 * 32 * 32))


def test_score_a_data_split_in_bits_per_dimension(
    stages: dict[str, Path], trained: tuple[Path, str], capsys
) -> None:
    run = trained[0]
    args = ["score", "--model", str(run), "--data", "shapes", "--count", "10", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 10 and result["subset"] == "holdout" and result["skipped"] == 0
    # 256 tokens of a 128-code vocabulary over 3 * 32 * 32 dimensions.
    assert result["bits_per_dim_uniform"] == pytest.approx(256 * 7 / (3 * 32 * 32))
    assert result["bits_per_dim"] == pytest.approx(result["bits_per_token"] * 256 / (3 * 32 * 32))
    # A trained model beats a uniform guess on images it never saw.
    assert result["bits_per_dim"] < result["bits_per_dim_uniform"]
    assert main(["score", "--model", str(run), "--data", "shapes"]) == 2
    assert "--count is needed" in capsys.readouterr().err
    assert main(["score", "--model", str(run)]) == 2
    assert "give an image and its caption, or --data" in capsys.readouterr().err


def test_generate_completes_a_primed_image(
    stages: dict[str, Path], trained: tuple[Path, str]
) -> None:
    run = trained[0]
    from PIL import Image

    from dalle.data.shapes_world import render_scene, sample_scene
    from dalle.sampling.generate import TextToImage

    image = torch.from_numpy(render_scene(sample_scene(0, 5, 32))).permute(2, 0, 1)
    pipe = TextToImage.from_pretrained(run)
    decoded: list[torch.Tensor] = []
    decode = pipe.image_tokenizer.decode
    pipe.image_tokenizer.decode = lambda tokens: decoded.append(tokens) or decode(tokens)  # type: ignore[method-assign]
    out = pipe("a red circle", 2, prime_image=image, prime_rows=3).images[0]
    assert out.shape == (2, 3, 32, 32)
    own = pipe.image_tokenizer.encode(image[None])  # [1, 16, 16]
    assert torch.equal(decoded[0][:, :3], own[:, :3].expand(2, -1, -1))  # the kept rows
    path = stages["root"] / "prime.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    out_dir = stages["root"] / "primed"
    args = [
        "generate",
        "a red circle",
        "--model",
        str(run),
        "--num",
        "2",
        "--out-dir",
        str(out_dir),
    ]
    assert main([*args, "--prime-image", str(path), "--prime-rows", "3"]) == 0
    assert len(list(out_dir.glob("*.png"))) == 2
    with pytest.raises(ValueError, match="prime_rows"):
        pipe("a red circle", prime_image=image, prime_rows=16)


def test_keep_best_orders_by_score() -> None:
    from dalle.sampling.rerank import keep_best

    images = torch.arange(5).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    kept, scores = keep_best(images, torch.tensor([0.1, 0.9, -1.0, 0.5, 0.2]), keep=3)
    assert kept[:, 0, 0, 0].tolist() == [1, 3, 4] and scores.tolist() == pytest.approx(
        [0.9, 0.5, 0.2]
    )


def test_standardise_puts_scores_on_one_scale() -> None:
    from dalle.sampling.rerank import standardise

    scores = torch.tensor([3.0, -1.0, 7.0, 2.0])
    z = standardise(scores)
    assert float(z.mean()) == pytest.approx(0, abs=1e-6)
    assert float(z.std()) == pytest.approx(1)
    assert torch.allclose(standardise(100 * scores - 5), z)  # only the order and gaps count
    assert torch.equal(z.argsort(), scores.argsort())
    assert torch.equal(standardise(torch.full((3,), 2.0)), torch.zeros(3))
    assert torch.equal(standardise(torch.tensor([4.0])), torch.zeros(1))


@torch.no_grad()
def _cached_log_likelihood(model, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``sum_j log p(token_j | caption, tokens before j)``, token by token with a cache."""
    cache = model.new_cache(len(text), text.device, torch.float32)
    _, logits = model(text, tokens[:, :0], cache=cache)
    total = torch.zeros(len(text))
    for j in range(tokens.shape[1]):
        total += logits[:, -1].float().log_softmax(-1).gather(1, tokens[:, j : j + 1])[:, 0]
        if j < tokens.shape[1] - 1:
            _, logits = model(None, tokens[:, j : j + 1], cache=cache, start=j)
    return total


def test_generate_reranks_by_its_own_likelihood_and_by_clip(
    stages: dict[str, Path], trained: tuple[Path, str], capsys
) -> None:
    run = trained[0]
    from dalle.sampling.generate import TextToImage
    from dalle.sampling.rerank import self_scores

    pipe = TextToImage.from_pretrained(run)
    images = pipe("a red circle", 3).images[0]
    scores = self_scores(pipe, images, ["a red circle"] * 3)
    # Computed another way: one token at a time through the sampler's key-value cache,
    # with the caption and with the empty caption of caption dropout.
    tokens = pipe.image_tokenizer.encode(images).flatten(1)  # [3, 256]
    text = pipe.tokenizer.encode(["a red circle"] * 3).ids
    expected = _cached_log_likelihood(pipe.model, text, tokens) - _cached_log_likelihood(
        pipe.model, torch.full_like(text, PAD_ID), tokens
    )
    assert torch.allclose(scores, expected, atol=1e-3)

    clip = stages["root"] / "clip"
    assert main(["train-clip", "--config", str(CONFIGS / "clip-tiny-cpu.yaml"), "--tokenizer",
                 str(stages["tokenizer"]), "--out", str(clip), "loop.steps=2",
                 "eval.shapes_zero_shot=0", "eval.samples=8"]) == 0  # fmt: skip
    for scorer in ("self", str(clip)):
        out_dir = stages["root"] / f"reranked-{Path(scorer).name}"
        args = ["generate", "a red circle", "a blue star", "--model", str(run), "--num", "4",
                "--rerank", scorer, "--keep", "2", "--out-dir", str(out_dir)]  # fmt: skip
        assert main(args) == 0
        assert len(list(out_dir.glob("*.png"))) == 4  # 2 kept for each of 2 prompts
        assert "kept 2 of 4" in capsys.readouterr().out
    args = ["clip-metrics", str(out_dir), "--clip", str(clip), "--real", "shapes", "--count", "16",
            "--json"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 4 and result["real_images"] == 16
    # The CLIP score again, from the written files: 100 * max(cosine, 0), averaged.
    from dalle.data.images import load_image
    from dalle.sampling.rerank import CLIPScorer

    files = sorted(out_dir.glob("*.png"))
    images = torch.stack([load_image(f, 32) for f in files])
    cosines = CLIPScorer.from_pretrained(clip)(images, [f.with_suffix(".txt").read_text()
                                                        for f in files])  # fmt: skip
    assert result["clip_score"] == pytest.approx(100 * cosines.clamp_min(0).mean().item())
    assert result["frechet_clip_distance"] > 0  # samples of a barely trained model are not real


def test_generate_uses_the_models_recommended_sampling(
    stages: dict[str, Path], trained: tuple[Path, str], capsys
) -> None:
    run = trained[0]
    import shutil

    from dalle.sampling.generate import GENERATION_CONFIG, TextToImage, write_sampling_defaults
    from dalle.sampling.sampler import SamplingConfig

    model = stages["root"] / "recommended"
    shutil.copytree(run, model)
    assert TextToImage.from_pretrained(model).defaults == SamplingConfig()  # none recorded
    recommended = SamplingConfig(temperature=0.5, top_k=3, guidance_scale=2.0)
    write_sampling_defaults(model, recommended, {"by": "test"})
    assert TextToImage.from_pretrained(model).defaults == recommended
    args = ["generate", "a red circle", "--model", str(model), "--num", "1",
            "--out-dir", str(stages["root"] / "recommended-out")]  # fmt: skip
    assert main(args) == 0
    assert "temperature 0.5, top_k 3, top_p 1, guidance_scale 2" in capsys.readouterr().out
    assert main([*args, "--top-k", "0", "--temperature", "1"]) == 0  # flags win
    assert "temperature 1, top_k 0, top_p 1, guidance_scale 2" in capsys.readouterr().out
    (model / GENERATION_CONFIG).write_text('{"temperature": -1}')
    assert main(args) == 2
    assert "not a valid generation config" in capsys.readouterr().err


def test_sampling_is_chosen_on_validation_prompts_only(monkeypatch) -> None:
    from types import SimpleNamespace

    from dalle.evaluation import text_to_image
    from dalle.sampling.sampler import SamplingConfig

    seen: list[str] = []

    def fake_judge(pipe, prompts, folder, sampling, seed, batch_size=64):
        seen.extend(prompts)
        return {"pass_rate": 0.9 if sampling.guidance_scale == 2.0 else 0.1}

    monkeypatch.setattr(text_to_image, "generate_and_judge", fake_judge)
    pipe = SimpleNamespace(image_size=64)
    candidates = text_to_image.sampling_candidates((1.0, 0.5), (1.0, 2.0))
    best, record = text_to_image.choose_sampling(pipe, candidates, count=16)
    assert best == SamplingConfig(temperature=1.0, guidance_scale=2.0)  # first of the tied best
    assert len(record["candidates"]) == 4 and record["candidates"][1]["seen"] == 0.9
    # The validation scenes, not the test scenes models are finally judged on.
    validation = text_to_image.shapes_prompts("train", 16, validation=True)
    assert seen[:16] == validation != text_to_image.shapes_prompts("train", 16)


def test_pipeline_keeps_the_best_of_each_prompts_draws(trained: tuple[Path, str]) -> None:
    from dalle.sampling.generate import TextToImage
    from dalle.sampling.rerank import self_scores

    pipe = TextToImage.from_pretrained(trained[0], reranker="self")
    prompts = ["a red circle", "a blue star"]
    out = pipe(prompts, 4, keep=2, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 2, 3, 32, 32) and out.first_images.shape == (2, 3, 32, 32)
    assert out.scores is not None and out.scores.shape == (2, 2)
    assert (out.scores[:, 0] >= out.scores[:, 1]).all()  # best first
    for i, prompt in enumerate(prompts):  # the scores are the re-ranker's, of those images
        again = self_scores(pipe, out.images[i], [prompt, prompt])
        assert torch.allclose(again, out.scores[i], atol=1e-3)
    # Every draw, unranked: the first of them is the first draw the ranked call reported.
    every = pipe(prompts, 4, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert every.scores is None and every.images.shape == (2, 4, 3, 32, 32)
    assert torch.equal(every.images[:, 0], out.first_images)
    # The kept ones are among the draws, and the best two of them by the scorer.
    for i, prompt in enumerate(prompts):
        scores = self_scores(pipe, every.images[i], [prompt] * 4)
        best = every.images[i][scores.argsort(descending=True, stable=True)[:2]]
        assert torch.equal(best, out.images[i])
    pipe.scorer = None
    with pytest.raises(ValueError, match="keep needs a re-ranker"):
        pipe(prompts, 4, keep=2)
