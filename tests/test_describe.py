"""Reading a caption from an image's CLIP embedding: the word-by-word search on a scorer
whose best caption is known, and `UnCLIP.describe` / `dalle variations --describe` on a
tiny trained pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle.cli import main
from dalle.sampling.describe import Slots, best_per_template, improve_caption, swaps
from dalle.sampling.unclip import UnCLIP

# "a yellow circle" is in none of them: a zero-shot pair of this tiny grammar.
KNOWN = ["a red circle", "a blue circle", "a blue square", "a yellow square",
         "a red circle to the left of a blue square", "a red circle in the top left",
         "a red circle in the top right", "a blue square in the left"]  # fmt: skip


def _matching_words(target: str):
    """A scorer: how many words sit where they sit in ``target``; and its calls' sizes."""
    calls = []

    def score(captions: list[str]) -> torch.Tensor:
        calls.append(len(captions))
        goal = target.split()
        return torch.tensor([float(sum(a == b for a, b in zip(c.split(), goal, strict=False)))
                             for c in captions])  # fmt: skip

    return score, calls


def test_slots_learn_kinds_of_words_and_where_each_may_stand() -> None:
    slots = Slots.learn(KNOWN)
    assert slots.kind["red"] == slots.kind["blue"] == slots.kind["yellow"]  # via a _ circle/square
    assert slots.kind["circle"] == slots.kind["square"] != slots.kind["red"]
    # A pair no known caption has: its shape may still be any shape, its colour any colour.
    assert slots.words("a yellow circle", 2) == ["circle", "square"]
    assert slots.words("a yellow circle", 1) == ["blue", "red", "yellow"]
    # Places keep their grammar: "to the left of" never becomes "to the top of".
    assert slots.words("a red circle to the left of a blue square", 5) == ["left"]
    assert slots.words("a red circle in the top left", 6) == ["left", "right"]
    assert slots.words("a red circle", 0) == ["a"]
    assert slots.words("a green circle", 2) == []  # beside an unknown word
    assert swaps("a red circle", 1, ["red", "blue", "yellow"]) == ["a blue circle",
                                                                "a yellow circle"]  # fmt: skip


def test_starts_are_the_best_caption_of_each_of_the_best_templates() -> None:
    slots = Slots.learn(KNOWN)
    one, two = slots.template("a red circle"), slots.template(KNOWN[4])
    assert slots.template("a yellow square") == one != two
    assert slots.template("a green circle") == (one[0], "green", one[2])  # unknown: itself
    captions = ["a red circle", KNOWN[4], "a blue square", "a red circle in the top left"]
    scores = torch.tensor([1.0, 5.0, 3.0, 0.0])
    assert best_per_template(captions, scores, slots, 2) == [1, 2]  # not 0: 2 is its best
    assert best_per_template(captions, scores, slots, 9) == [1, 2, 3]
    # Swaps search within a template: from the two-object start alone, the search could
    # never reach the one-object caption that scores best.
    score, _ = _matching_words("a yellow circle")
    caption, _ = improve_caption(score, KNOWN[4], 0.0, slots)
    assert slots.template(caption) == two


def test_the_search_reaches_a_combination_no_known_caption_states() -> None:
    score, _ = _matching_words("a yellow circle")
    caption, value = improve_caption(score, "a blue square", 1.0, Slots.learn(KNOWN))
    assert (caption, value) == ("a yellow circle", 3.0)


def test_the_search_never_ends_worse_and_stops_when_a_pass_changes_nothing() -> None:
    score, calls = _matching_words("a red circle")
    slots = Slots.learn(KNOWN)
    caption, value = improve_caption(score, "a red circle", 3.0, slots, passes=5)
    assert (caption, value) == ("a red circle", 3.0)
    assert calls == [2, 1]  # one pass: colour and shape tried ("a" has no stand-in), then stop
    # A start scored higher than any swap stays as it is.
    assert improve_caption(score, "a blue square", 99.0, slots) == ("a blue square", 99.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from serving_helpers import make_tiny_models
    from test_unclip import CONFIGS

    root = tmp_path_factory.mktemp("describe")
    clip = make_tiny_models(root)[1]
    decoder = root / "decoder"
    assert main(["train-decoder", "--config", str(CONFIGS / "decoder-tiny-cpu.yaml"), "--clip",
                 str(clip), "--out", str(decoder), "loop.steps=2"]) == 0  # fmt: skip
    return decoder


def test_the_pipeline_reads_a_caption_the_clip_rates_above_every_known_one(trained) -> None:
    pipe = UnCLIP.from_pretrained(trained)
    images = torch.randint(0, 256, (2, 3, pipe.image_size, pipe.image_size), dtype=torch.uint8)
    embeds = pipe.encode_image(images)
    assert pipe.reader() == "clip"  # a diffusion decoder has no likelihood to read with
    with pytest.raises(ValueError, match="only a transformer decoder"):
        pipe.describe(images, KNOWN, reader="decoder")
    described = pipe.describe(images, KNOWN)
    _, known = pipe.encode_text(KNOWN)
    _, read = pipe.encode_text(described)
    for i in range(2):
        assert float(read[i] @ embeds[i]) >= float((known @ embeds[i]).max()) - 1e-5
        assert set(described[i].split()) <= {word for c in KNOWN for word in c.split()}
    with pytest.raises(ValueError, match="at least one known caption"):
        pipe.describe(images, [])
    # Known captions prepared once read the same as the list itself.
    known = pipe.known_captions([*KNOWN, KNOWN[0]])
    assert known.captions == list(KNOWN) and known.embeds.shape == (len(KNOWN), embeds.shape[1])
    assert pipe.describe(images, known) == described
    with pytest.raises(ValueError, match="only a transformer decoder"):
        pipe.variations(images[0], num_images=1, candidates=2, rank="clip+likelihood")
    drawn = pipe.variations(images[0], num_images=2, steps=2, describe=KNOWN)
    assert drawn.shape == (2, 3, pipe.image_size, pipe.image_size)


def test_variations_read_their_caption_from_the_command_line(trained, tmp_path, capsys) -> None:
    source = tmp_path / "source.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(source)
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(KNOWN) + "\n")
    base = ["variations", str(source), "--decoder", str(trained), "--decoder-steps", "2",
            "--num", "2"]  # fmt: skip
    for known in (str(captions), "shapes"):
        grid = tmp_path / f"grid-{Path(known).stem}.png"
        assert main([*base, "--describe", known, "--describe-count", "50", "--out",
                     str(grid)]) == 0  # fmt: skip
        assert "the CLIP reads the image as: " in capsys.readouterr().out
        with Image.open(grid) as image:
            assert image.width > 2 * 32
    assert main([*base, "--describe", str(tmp_path / "none.txt"), "--out",
                 str(tmp_path / "x.png")]) == 2  # fmt: skip
    assert "no caption file" in capsys.readouterr().err
