"""The command line end to end: write Shapes World, judge it, run the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dalle.cli import main


@pytest.mark.parametrize("fmt", ["folder", "wds"])
def test_data_shapes_then_judge(tmp_path: Path, capsys, fmt: str) -> None:
    out = tmp_path / "shapes"
    args = ["data", "shapes", "--out", str(out), "--count", "24", "--size", "64"]
    assert (
        main([*args, "--split", "zeroshot", "--seed", "3", "--format", fmt, "--shard-size", "10"])
        == 0
    )
    if fmt == "wds":
        assert sorted(p.name for p in out.iterdir()) == [
            "shapes-000000.tar", "shapes-000001.tar", "shapes-000002.tar",
        ]  # fmt: skip
        capsys.readouterr()
        assert main(["data", "check", str(out / "shapes-{000000..000002}.tar"), "--json"]) == 0
        checked = json.loads(capsys.readouterr().out)
        assert checked["samples"] == 24 and checked["skipped"]["total"] == 0
        return
    capsys.readouterr()
    assert main(["judge", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 24 and report["accuracy"] == 1.0
    assert set(report["per_attribute"]) == {
        "count",
        "color",
        "shape",
        "size",
        "position",
        "relation",
    }
    # Damage one image: the judge must notice it, and say which attribute failed.
    Image.new("RGB", (64, 64), "white").save(out / "000000.png")
    assert main(["judge", str(out)]) == 0
    text = capsys.readouterr().out
    assert "judged 24 images: 23 passed" in text and "count" in text
    # Content only: count, colours and shapes are judged; size and place are not.
    assert main(["judge", str(out), "--content-only", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] == 23 and report["stated"]["position"] == 0
    assert report["stated"]["color"] == 24


def test_a_closed_pipe_stops_quietly(tmp_path: Path, monkeypatch, capsys) -> None:
    # `dalle judge DIR | head -1`: the reader leaves after one line.
    from dalle.data.shapes_world import render_scene, sample_scene

    scene = sample_scene(0, 1, 64)
    Image.fromarray(render_scene(scene)).save(tmp_path / "0000.png")
    (tmp_path / "0000.txt").write_text(scene.caption)

    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["judge", str(tmp_path)]) == 0
    assert "Broken pipe" not in capsys.readouterr().err


def test_judge_empty_directory_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["judge", str(tmp_path)]) == 2
    assert "no .png images" in capsys.readouterr().err


def test_demo_runs_every_stage_and_reuses_finished_ones(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "reusing" not in first
    results = json.loads((out / "results.json").read_text())
    for name in ("seen", "zeroshot"):
        assert results[name]["images"] == 4  # judged, whatever the verdict after 4 updates
        assert len(list((out / name).glob("*.png"))) == 4
        assert len(list((out / name).glob("*.txt"))) == 4
        assert (out / f"{name}_grid.png").exists()
        # Each kept image is the CLIP's best of 2; the first draws are judged too.
        # The judged share of 4 prompts' first draws.
        assert results[name]["accuracy_without_reranking"] in (0, 0.25, 0.5, 0.75, 1)
    assert "zero_shot_shape" in results["clip"]
    for model in ("image_tokenizer", "dalle", "clip"):
        assert (out / model / "model.safetensors").exists()
    # The transformer read the scenes encoded once, not images.
    tokens = json.loads((out / "image_tokens" / "tokens.json").read_text())
    assert tokens["samples"] == 64
    trained_on = yaml.safe_load((out / "dalle" / "train_config.yaml").read_text())
    assert trained_on["data"]["source"].startswith(str(out / "image_tokens"))
    assert "4 of 4 planned updates" in first
    # The CLIP trained in a child process beside the image tokenizer, its output in a log.
    assert "CLIP (re-ranks the samples): trains beside the image tokenizer" in first
    assert "trained 4 steps" in (out / "clip" / "train.log").read_text()
    assert first.count("[demo] CLIP (re-ranks the samples): 4 of 4 planned updates") == 1
    assert main(["demo", "--smoke", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("reusing the finished stage") == 8


def test_demo_stage_that_fails_beside_another_is_one_clear_error(tmp_path: Path) -> None:
    """A stage trained in the child process that stops is an error naming its log, not a
    silent half-trained folder."""
    from dalle.demo import _side_by_side, smoke_config, stage_configs

    stages = stage_configs(smoke_config(), tmp_path)  # no caption tokenizer was trained
    finished = tmp_path / "dalle"
    finished.mkdir()
    (finished / ".complete").touch()  # this process's stage is done: only the child runs
    here = ("transformer", finished, *stages["dalle"])
    with pytest.raises(RuntimeError, match=r"the CLIP stage stopped .*clip/train\.log"):
        _side_by_side(here, ("CLIP", tmp_path / "clip", *stages["clip"]), 1.0)
    assert "no tokenizer.json" in (tmp_path / "clip" / "train.log").read_text()


def test_demo_training_minutes_scale_every_stage(tmp_path: Path, capsys) -> None:
    from dalle.demo import DemoConfig, demo_training_minutes, scale_loop
    from dalle.training.loop import LoopConfig

    loop = LoopConfig(steps=2500, eval_every=2500, checkpoint_every=200, max_minutes=9,
                      schedule_clock="time")  # fmt: skip
    half = scale_loop(loop, 0.5)
    assert (half.steps, half.eval_every, half.checkpoint_every, half.max_minutes) == (
        1250, 1250, 100, 4.5)  # fmt: skip
    assert half.log_every == loop.log_every and scale_loop(loop, 1.0) is loop
    tuned = demo_training_minutes(DemoConfig())
    from dalle.demo import CONFIG_DIR

    budgets = [yaml.safe_load((CONFIG_DIR / f"{stage}-shapes-demo.yaml").read_text())["loop"]
               for stage in ("fsq", "dalle", "clip")]  # fmt: skip
    # Read from the files; the image tokenizer and the CLIP train side by side, so the
    # longer of the two counts, and every stage when they run one after the other.
    tokenizer, transformer, clip = (b["max_minutes"] for b in budgets)
    assert tuned == pytest.approx(max(tokenizer, clip) + transformer)
    one_by_one = demo_training_minutes(DemoConfig(side_by_side=False))
    assert one_by_one == pytest.approx(tokenizer + transformer + clip)
    out = tmp_path / "demo"
    args = ["demo", "--smoke", "--out", str(out), "--training-minutes", str(2 * tuned)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "training budget scaled by 2" in printed and "8 of 8 planned updates" in printed
    assert json.loads((out / "image_tokens" / "tokens.json").read_text())["samples"] == 128
    assert main(["demo", "--out", str(out), "--training-minutes", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
