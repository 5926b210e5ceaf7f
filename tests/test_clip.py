"""CLIP: sizes, pooling at end of text, the contrastive loss and temperature, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dalle.cli import main
from dalle.losses.clip import clip_loss
from dalle.models.clip import CLIP, CLIP_PRESETS, CLIPConfig
from dalle.tokenizers.text import EOT_ID, PAD_ID
from dalle.training.clip_task import CLIPTask
from dalle.training.stages import CLIP_STAGE

CONFIGS = Path(__file__).parent.parent / "configs"


def test_vit_b32_preset_matches_openai_on_meta() -> None:
    with torch.device("meta"):
        model = CLIP(CLIP_PRESETS["clip-vit-b32"])
    assert model.parameter_counts()["total"] == 151_277_313
    with pytest.raises(ValueError, match="multiple of the patch size"):
        CLIPConfig(image_size=100, patch_size=32)


def _tiny() -> CLIP:
    torch.manual_seed(0)
    return CLIP(CLIP_PRESETS["clip-tiny"]).eval()


def test_text_feature_is_read_at_end_of_text() -> None:
    model = _tiny()
    text = torch.tensor([[5, 6, 7, EOT_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    base = model.encode_text(text)
    assert base.shape == (1, 16) and torch.allclose(base.norm(dim=-1), torch.ones(1))
    after = text.clone()
    after[0, 5] = 9  # past [EOT]: the causal mask keeps it out of the feature
    assert torch.allclose(model.encode_text(after), base, atol=1e-6)
    before = text.clone()
    before[0, 1] = 9
    assert not torch.allclose(model.encode_text(before), base, atol=1e-3)


def test_image_features_are_unit_vectors() -> None:
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    features = _tiny().encode_image(images)
    assert features.shape == (3, 16) and torch.allclose(features.norm(dim=-1), torch.ones(3))


def test_loss_is_symmetric_and_starts_near_log_batch() -> None:
    logits = torch.randn(8, 8)
    assert clip_loss(logits).item() == pytest.approx(clip_loss(logits.T).item())
    assert clip_loss(torch.zeros(8, 8)).item() == pytest.approx(math.log(8))
    assert clip_loss(100 * torch.eye(8)).item() < 1e-6


def test_temperature_starts_at_one_fourteenth_and_is_capped_at_100() -> None:
    model = _tiny()
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0, rel=1e-5)


@pytest.mark.parametrize("tower", ["text", "image"])
def test_transformer_blocks_start_depth_scaled_and_distinct(tower: str) -> None:
    config = CLIPConfig(text_vocab_size=64, text_len=8, text_width=64, text_layers=4,
                        text_heads=2, image_size=32, patch_size=8, image_width=64,
                        image_layers=4, image_heads=2, embed_dim=16)  # fmt: skip
    torch.manual_seed(0)
    layers = getattr(CLIP(config), f"{tower}_blocks").layers
    residual = (64 * 2 * 4) ** -0.5  # back into the stream: 1 / sqrt(width * 2 layers)
    for layer in layers:
        assert layer.self_attn.in_proj_weight.std().item() == pytest.approx(64**-0.5, rel=0.05)
        assert layer.self_attn.out_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
        assert layer.linear1.weight.std().item() == pytest.approx(128**-0.5, rel=0.05)
        assert layer.linear2.weight.std().item() == pytest.approx(residual, rel=0.05)
    # nn.TransformerEncoder copies one layer; every layer must start from its own draw.
    assert not torch.equal(layers[0].linear1.weight, layers[1].linear1.weight)


def test_frechet_distance_of_a_shifted_copy_is_the_squared_shift() -> None:
    import numpy as np

    from dalle.evaluation.clip_metrics import frechet_distance

    a = np.random.default_rng(0).normal(size=(400, 6))
    assert abs(frechet_distance(a, a)) < 1e-6
    shift = np.array([3.0, 0, 0, 4.0, 0, 0])
    assert frechet_distance(a, a + shift) == pytest.approx(25.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        frechet_distance(a[:1], a)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "tok"
    config = str(CONFIGS / "tokenizer-shapes.yaml")
    args = ["tokenizer", "train", "--config", config, "--out", str(out),
            "tokenizer.max_captions=1000", "tokenizer.max_length=16"]  # fmt: skip
    assert main(args) == 0
    return out


def test_resnet_tower_halves_to_the_patch_grid_and_pools_by_attention(tmp_path: Path) -> None:
    config = CLIPConfig(**{**vars(CLIP_PRESETS["clip-tiny"]), "image_encoder": "resnet",
                           "image_layers": 3, "patch_size": 8})  # fmt: skip
    torch.manual_seed(0)
    model = CLIP(config).eval()
    stages = model.image_resnet.stages
    strided = [m for m in stages if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert [m.out_channels for m in strided] == [8, 16, 32]  # 32 px -> 4x4, up to the width
    assert len(model.residual_blocks()) == 2 + 3  # text blocks, then image blocks
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    features = model.encode_image(images)
    assert features.shape == (2, 16) and torch.allclose(features.norm(dim=-1), torch.ones(2))
    moved = images.roll(8, dims=3)  # the same content elsewhere: positions are seen
    assert not torch.allclose(model.encode_image(moved), features, atol=1e-3)
    model.save_pretrained(tmp_path)
    assert torch.equal(CLIP.from_pretrained(tmp_path).encode_image(images), features)
    with pytest.raises(ValueError, match="vit or resnet"):
        CLIPConfig(image_encoder="cnn")


@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_a_few_steps_on_a_fixed_batch_lower_the_loss(tokenizer_dir: Path, tower: str) -> None:
    config = CLIP_STAGE.build_config(
        CONFIGS / "clip-tiny-cpu.yaml",
        [f"tokenizer={tokenizer_dir}", "eval.shapes_zero_shot=0", f"model.image_encoder={tower}"],
    )
    torch.manual_seed(0)
    task = CLIPTask(config, torch.device("cpu"))
    images, text = task.eval_images[:16], task.eval_text[:16]
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = clip_loss(task.model(images, text))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_train_clip_reports_health_metrics_exports_and_resumes(
    tokenizer_dir: Path, tmp_path: Path, capsys
) -> None:
    from interrupt import assert_resumes_exactly

    run = tmp_path / "run"
    args = ["train-clip", "--config", str(CONFIGS / "clip-tiny-cpu.yaml"),
            "--tokenizer", str(tokenizer_dir), "--out", str(run), "loop.steps=6",
            "loop.eval_every=3"]  # fmt: skip
    assert main(args) == 0
    assert "retrieval_r1" in capsys.readouterr().out
    evals = [json.loads(line)["eval"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "eval" in json.loads(line)]  # fmt: skip
    assert {"val_loss", "retrieval_r1", "zero_shot_color", "zero_shot_shape"} <= set(evals[-1])
    loaded = CLIP.from_pretrained(run)
    # The exported CLIP, asked through the re-ranker's interface which of the 42 colour-shape
    # prompts fits each held-out single-object scene best, scores as the run reported.
    from dalle.data.shapes_world import render_scene
    from dalle.sampling.rerank import CLIPScorer
    from dalle.training.clip_task import single_object_scenes, zero_shot_prompts

    scorer = CLIPScorer.from_pretrained(run)
    scenes = single_object_scenes(42, 32)
    images = torch.stack([torch.from_numpy(render_scene(s)).permute(2, 0, 1) for s in scenes])
    prompts = zero_shot_prompts()
    best = scorer.image_features(images) @ scorer.text_features([p for *_, p in prompts]).T
    guessed = [prompts[i][:2] for i in best.argmax(dim=1).tolist()]
    truth = [(s.objects[0].color, s.objects[0].shape) for s in scenes]
    color = sum(g[0] == t[0] for g, t in zip(guessed, truth, strict=True)) / 42
    shape = sum(g[1] == t[1] for g, t in zip(guessed, truth, strict=True)) / 42
    assert (color, shape) == pytest.approx((evals[-1]["zero_shot_color"],
                                            evals[-1]["zero_shot_shape"]))  # fmt: skip
    assert loaded.config.text_len == 16 and (run / "tokenizer" / "tokenizer.json").exists()

    overrides = [f"tokenizer={tokenizer_dir}", "loop.steps=6", "loop.checkpoint_every=2",
                 "loop.eval_every=6", "eval.shapes_zero_shot=0", "bpe_dropout=0.2"]  # fmt: skip
    config = CLIP_STAGE.build_config(CONFIGS / "clip-tiny-cpu.yaml", overrides)
    assert_resumes_exactly(config, CLIPTask, tmp_path)


def test_loss_with_hard_negatives_matches_each_image_to_its_own_caption() -> None:
    torch.manual_seed(0)
    square = torch.randn(4, 4)
    # No extra captions: the grouped form is the plain loss.
    assert torch.allclose(clip_loss(square, 4, 4), clip_loss(square))
    # Two groups (ranks) of 2 images, each group with 2 captions then 2 negatives:
    # image 2 (group 1, first) matches text column 4.
    logits = torch.full((4, 8), -10.0)
    for image, column in enumerate([0, 1, 4, 5]):
        logits[image, column] = 10.0
    assert clip_loss(logits, 2, 4) < 1e-3
    logits[2, 6] = 20.0  # a negative scored above the image's own caption
    assert clip_loss(logits, 2, 4) > 1.0


def test_hard_negatives_swap_exactly_one_word_within_its_group() -> None:
    from dalle.data.hard_negatives import hard_negatives, swap_one_word

    groups = [["circle", "square", "star"], ["red", "blue"]]
    caption = "a small red circle in the top left"
    torch.manual_seed(0)
    for _ in range(20):
        negative = swap_one_word(caption, groups)
        assert negative is not None and negative != caption
        pairs = zip(caption.split(" "), negative.split(" "), strict=True)
        changed = [(a, b) for a, b in pairs if a != b]
        assert len(changed) == 1
        assert any(changed[0][0] in g and changed[0][1] in g for g in groups)
    # A forbidden phrase is never produced; nothing to swap gives the next caption.
    for _ in range(20):
        assert swap_one_word("a red circle", [["circle", "star"]], ["red star"]) is None
    assert hard_negatives(["no match here", "a red star"], groups)[0] == "a red star"
    torch.manual_seed(1)
    first = hard_negatives(["a red circle", "a blue star"], groups)
    torch.manual_seed(1)
    assert hard_negatives(["a red circle", "a blue star"], groups) == first  # seeded


def test_clip_can_train_on_an_image_tokenizers_reconstructions(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    from dalle.data.datasets import Batch
    from dalle.models.fsq import FSQ_PRESETS, FSQTokenizer
    from dalle.models.image_tokenizer import load_image_tokenizer

    FSQTokenizer(FSQ_PRESETS["fsq-tiny"]).save_pretrained(tmp_path / "fsq")
    fsq = load_image_tokenizer(tmp_path / "fsq")
    common = [f"tokenizer={tokenizer_dir}", "eval.samples=8", "eval.shapes_zero_shot=14"]
    config = CONFIGS / "clip-tiny-cpu.yaml"
    plain = CLIPTask(CLIP_STAGE.build_config(config, common), torch.device("cpu"))
    through_fsq = [*common, f"image_tokenizer={tmp_path / 'fsq'}"]
    task = CLIPTask(CLIP_STAGE.build_config(config, through_fsq), torch.device("cpu"))
    # Held-out and zero-shot images are the reconstructions of the plain ones ...
    assert torch.equal(task.eval_images, fsq.decode(fsq.encode(plain.eval_images)))
    assert torch.equal(task.zero_shot_images, fsq.decode(fsq.encode(plain.zero_shot_images)))
    assert not torch.equal(task.eval_images, plain.eval_images)
    # ... and so are the training images.
    seen = []

    def record(images: torch.Tensor, text: torch.Tensor, gather=None) -> torch.Tensor:
        seen.append(images)
        return torch.zeros(len(images), len(text), requires_grad=True)

    task.model.forward = record  # type: ignore[method-assign]
    task.training_loss(Batch(plain.eval_images[:4], plain.eval_captions[:4], ["k"] * 4, []), 0)
    assert torch.equal(seen[0], fsq.decode(fsq.encode(plain.eval_images[:4])))
