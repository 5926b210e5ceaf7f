"""Image-caption loaders: real data, broken data, preprocessing and sharding."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle.data.datasets import (
    SHAPES_HOLDOUT_START,
    DataConfig,
    ImageTextFolder,
    ShapesWorldStream,
    WebDatasetSource,
    expand_shards,
    iter_captions,
    load_images,
    make_loader,
    new_skip_log,
    open_source,
)
from dalle.data.images import (
    load_image,
    random_crops,
    resize_center_crop,
    to_rgb,
    window_foreground,
)
from dalle.data.shapes_world import sample_scene


def _png(color=(255, 0, 0, 255), size=(8, 8), mode="RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _read_all(dataset, config: DataConfig):
    skips = new_skip_log(dataset)
    captions, images = [], []
    for batch in make_loader(dataset, config):
        skips.add(batch.skipped)
        captions += batch.captions
        images.append(batch.images)
    return captions, torch.cat(images) if images else None, skips


def test_emoji_webdataset_loads_every_sample(emoji_tar: Path) -> None:
    config = DataConfig(source=str(emoji_tar), image_size=32, batch_size=256, shuffle=False)
    captions, images, skips = _read_all(open_source(config), config)
    assert len(captions) == 3414 and skips.total == 0
    assert images.shape == (3414, 3, 32, 32) and images.dtype == torch.uint8
    assert "grinning face with big eyes" in captions
    # Transparent surroundings are composited onto white, not black.
    assert images[:, :, 0, 0].float().mean() > 250


def test_emoji_as_folder_with_workers(emoji_tar: Path, tmp_path: Path) -> None:
    with tarfile.open(emoji_tar) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith((".png", ".txt"))][:300]
        tar.extractall(tmp_path / "nested" / "deeper", members=members, filter="data")
    config = DataConfig(source=str(tmp_path), image_size=64, batch_size=32, num_workers=2)
    dataset = open_source(config)
    assert isinstance(dataset, ImageTextFolder) and len(dataset) == 150
    captions, images, skips = _read_all(dataset, config)
    assert len(captions) == 150 and skips.total == 0 and images.shape[1:] == (3, 64, 64)


def _broken_tar(path: Path) -> Path:
    """A shard with good samples and every kind of bad one."""
    parts = {
        "good1": {"png": _png(), "txt": b"a red square"},
        "corrupt": {"png": b"\x89PNG\r\n\x1a\nthis is not a png", "txt": b"broken image"},
        "truncated": {"png": _png()[:40], "txt": b"cut short"},
        "nocaption": {"png": _png()},
        "noimage": {"txt": b"caption without picture"},
        "empty": {"png": _png(), "txt": b"   \n"},
        "jsoncap": {"jpg": b"", "json": b'{"caption": "from json"}'},
        "good2": {"webp": None, "json": b'{"text": "a webp with a json caption"}'},
    }
    webp = io.BytesIO()
    Image.new("RGB", (10, 6), (0, 0, 255)).save(webp, format="WEBP")
    parts["good2"]["webp"] = webp.getvalue()
    jpg = io.BytesIO()
    Image.new("RGB", (6, 10), (0, 255, 0)).save(jpg, format="JPEG")
    parts["jsoncap"]["jpg"] = jpg.getvalue()
    with tarfile.open(path, "w") as tar:
        for key, files in parts.items():
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_broken_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    shard = _broken_tar(tmp_path / "broken-000.tar")
    config = DataConfig(source=str(shard), image_size=16, batch_size=2, shuffle=False)
    captions, images, skips = _read_all(open_source(config), config)
    assert sorted(captions) == ["a red square", "a webp with a json caption", "from json"]
    assert images.shape == (3, 3, 16, 16)
    assert skips.total == 5
    assert skips.counts["missing caption"] == 1
    assert skips.counts["missing image"] == 1
    assert skips.counts["empty caption"] == 1
    assert sum(c for r, c in skips.counts.items() if r.startswith("unreadable image")) == 2
    assert "skipped 5 samples" in skips.summary()


def test_broken_files_in_a_folder_are_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png())
    (tmp_path / "a.txt").write_text("a red square")
    (tmp_path / "b.png").write_bytes(b"garbage")
    (tmp_path / "b.txt").write_text("garbage image")
    (tmp_path / "c.png").write_bytes(_png())  # no caption
    (tmp_path / "d.txt").write_text("no image")
    (tmp_path / "e.jpg").write_bytes(_png())  # a PNG named .jpg still decodes
    (tmp_path / "e.txt").write_text("")
    config = DataConfig(source=str(tmp_path), image_size=8, batch_size=4, shuffle=False)
    captions, _, skips = _read_all(open_source(config), config)
    # A bad item is skipped, never replaced by a good one read twice.
    assert captions == ["a red square"]
    assert skips.counts == {
        "missing caption": 1, "missing image": 1, "empty caption": 1,
        "unreadable image (UnidentifiedImageError)": 1,
    }  # fmt: skip


def test_cli_data_check_reports_skips(tmp_path: Path, capsys) -> None:
    from dalle.cli import main

    shard = _broken_tar(tmp_path / "broken-000.tar")
    assert main(["data", "check", str(shard), "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert "read 3 samples" in out and "skipped 5 samples" in out and "missing caption" in out


def test_alpha_is_composited_on_white_and_images_are_center_cropped() -> None:
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0))[0] in (127, 128)
    # A 40x20 image, left half red, right half blue, middle band green: the centre crop
    # of a 20x20 result keeps the middle band.
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = (255, 0, 0)
    wide[:, 10:30] = (0, 255, 0)
    wide[:, 30:] = (0, 0, 255)
    cropped = resize_center_crop(Image.fromarray(wide), 10)
    assert cropped.size == (10, 10)
    assert np.asarray(cropped)[:, :, 1].min() > 200  # all green
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    tensor = load_image(buffer.getvalue(), 10)
    assert tensor.shape == (3, 10, 10) and tensor.dtype == torch.uint8


def test_brace_patterns_expand_and_missing_shards_are_named(tmp_path: Path) -> None:
    for i in range(3):
        _broken_tar(tmp_path / f"s-{i:03d}.tar")
    shards = expand_shards(str(tmp_path / "s-{000..002}.tar"))
    assert [Path(s).name for s in shards] == ["s-000.tar", "s-001.tar", "s-002.tar"]
    source = WebDatasetSource(str(tmp_path / "s-{000..002}.tar"), 8)
    assert sum(1 for _ in source) == 9
    with pytest.raises(FileNotFoundError, match=r"s-003\.tar"):
        expand_shards(str(tmp_path / "s-{000..003}.tar"))
    with pytest.raises(FileNotFoundError, match="neither"):
        open_source(DataConfig(source=str(tmp_path / "nothing-here")))


def test_shapes_stream_splits_indices_across_workers() -> None:
    config = DataConfig(source="shapes", count=48, batch_size=8, num_workers=2, image_size=32)
    dataset = open_source(config)
    assert isinstance(dataset, ShapesWorldStream)
    keys = [k for batch in make_loader(dataset, config) for k in batch.keys]
    assert sorted(keys) == [f"train-{i:08d}" for i in range(48)]
    zeroshot = ShapesWorldStream(32, "zeroshot", count=3)
    assert [s["key"] for s in zeroshot] == [
        "zeroshot-00000000",
        "zeroshot-00000001",
        "zeroshot-00000002",
    ]


def test_iter_captions_reads_only_its_subset(emoji_tar: Path) -> None:
    read = {subset: list(iter_captions(DataConfig(source=str(emoji_tar), subset=subset)))
            for subset in ("all", "train", "holdout")}  # fmt: skip
    assert read["holdout"] and len(read["train"]) + len(read["holdout"]) == len(read["all"])
    holdout = DataConfig(source=str(emoji_tar), subset="holdout")
    assert sorted(read["holdout"]) == sorted(load_images(holdout, 10_000)[1])
    shapes = DataConfig(source="shapes", subset="holdout")
    assert list(iter_captions(shapes, limit=3)) == [
        s.caption for s in (sample_scene(0, SHAPES_HOLDOUT_START + i, 64) for i in range(3))
    ]


def test_iter_captions_reads_without_images(emoji_tar: Path) -> None:
    captions = list(iter_captions(DataConfig(source=str(emoji_tar)), limit=50))
    assert len(captions) == 50 and all(isinstance(c, str) and c for c in captions)
    shapes = list(iter_captions(DataConfig(source="shapes:zeroshot"), limit=5))
    assert len(shapes) == 5


def test_training_ranks_split_shapes_indices_and_refuse_too_few_shards(
    emoji_tar: Path, monkeypatch
) -> None:
    from dalle.data import datasets

    monkeypatch.setattr(datasets, "_rank_and_world", lambda: (1, 2))
    stream = datasets.ShapesWorldStream(32, count=6, split_by_rank=True)
    assert list(stream.indices()) == [1, 3, 5]  # rank 1 of 2
    everything = datasets.ShapesWorldStream(32, count=6)  # evaluation reads it all
    assert list(everything.indices()) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="cannot be split over 2 ranks"):
        datasets.WebDatasetSource(str(emoji_tar), 32, split_by_rank=True)
    datasets.WebDatasetSource(str(emoji_tar), 32)  # fine when not split


# ----------------------------------------------------------------------------- holdout


def _keys(config: DataConfig, split_by_rank: bool = False) -> list[str]:
    dataset = open_source(config, split_by_rank=split_by_rank)
    loader = make_loader(dataset, config, split_by_rank=split_by_rank)
    return [key for batch in loader for key in batch.keys]


def _check_split(config: DataConfig, everything: set[str] | None = None) -> None:
    train = _keys(replace(config, subset="train"))
    holdout = _keys(replace(config, subset="holdout"))
    assert holdout, "the holdout subset is empty"
    assert not set(train) & set(holdout), "a sample is in both subsets"
    assert holdout == _keys(replace(config, subset="holdout")), "the holdout is not stable"
    if everything is not None:
        assert set(train) | set(holdout) == everything
        assert 0.03 < len(holdout) / len(everything) < 0.2  # about holdout_fraction (0.1)


def test_shapes_holdout_is_far_from_any_training_index() -> None:
    config = DataConfig(source="shapes", image_size=32, batch_size=16, count=64, num_workers=2)
    _check_split(config)
    holdout = _keys(replace(config, subset="holdout"))
    assert holdout[0] == f"train-{SHAPES_HOLDOUT_START:08d}"
    with pytest.raises(ValueError, match="must stay below"):
        open_source(replace(config, subset="train", start=SHAPES_HOLDOUT_START - 10, count=20))


def test_folder_and_tar_holdout_by_key_with_workers(emoji_tar: Path, tmp_path: Path) -> None:
    everything = set(_keys(DataConfig(source=str(emoji_tar), batch_size=256, shuffle=False)))
    tar = DataConfig(source=str(emoji_tar), image_size=16, batch_size=64, num_workers=2,
                     shuffle=False)  # fmt: skip
    _check_split(tar, everything)
    with tarfile.open(emoji_tar) as archive:
        members = [m for m in archive.getmembers() if m.name.endswith((".png", ".txt"))][:1000]
        archive.extractall(tmp_path, members=members, filter="data")
    folder = DataConfig(source=str(tmp_path), image_size=16, batch_size=32, num_workers=2)
    _check_split(folder, set(_keys(replace(folder, shuffle=False))))


def test_holdout_split_holds_under_ranks(tmp_path: Path, monkeypatch) -> None:
    """Each of two ranks reads its own share of the training subset; the holdout (read
    whole by every rank, for evaluation) meets none of them."""
    from dalle.data import datasets
    from dalle.data.writers import write_shapes_world

    write_shapes_world(tmp_path / "wds", 400, 32, "train", 0, "wds", 100, 1)
    config = DataConfig(source=str(tmp_path / "wds" / "shapes-{000000..000003}.tar"),
                        image_size=16, batch_size=16, shuffle=False, num_workers=2)  # fmt: skip
    holdout = set(_keys(replace(config, subset="holdout")))
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))  # what webdataset's node split reads
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setattr(datasets, "_rank_and_world", lambda rank=rank: (rank, 2))
        shares.append(set(_keys(replace(config, subset="train"), split_by_rank=True)))
    assert holdout and not (shares[0] & shares[1]) and not ((shares[0] | shares[1]) & holdout)
    assert len(shares[0] | shares[1] | holdout) == 400


def test_random_crops_are_windows_on_the_patch_grid() -> None:
    images = torch.arange(4 * 3 * 16 * 16, dtype=torch.float32).view(4, 3, 16, 16)
    generator = torch.Generator().manual_seed(0)
    corners = set()
    for _ in range(10):
        crops = random_crops(images, 8, stride=4, generator=generator)
        assert crops.shape == (4, 3, 8, 8)
        for image, crop in zip(images, crops, strict=True):
            row, col = divmod(int((crop[0, 0, 0] - image[0, 0, 0]).item()), 16)
            assert row % 4 == 0 and col % 4 == 0  # the corner lies on the 4-pixel grid
            assert torch.equal(crop, image[:, row : row + 8, col : col + 8])
            corners.add((row, col))
    assert len(corners) == 9  # every corner of the 3 x 3 possible ones is drawn
    with pytest.raises(ValueError, match="multiple of 4"):
        random_crops(images, 6, stride=4)
    with pytest.raises(ValueError, match="must fit"):
        random_crops(images, 32)


def test_window_foreground_is_the_share_of_pixels_off_the_background() -> None:
    images = torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)  # white
    images[0, :, 0:4, 12:16] = torch.tensor([200, 0, 0], dtype=torch.uint8)[:, None, None]
    images[0, :, 8:9, 0:1] = 230  # off white by 25 < 60: background still
    shares = window_foreground(images, 8, stride=4)  # corners 0, 4, 8 per side
    assert shares.shape == (2, 3, 3)
    expected = torch.zeros(3, 3)
    expected[0, 2] = 16 / 64  # the 4x4 red block fills a quarter of the top-right window
    assert torch.equal(shares[0], expected) and not shares[1].any()


def test_weighted_crops_follow_their_weights() -> None:
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    weights = torch.zeros(2, 3, 3)
    weights[0, 2, 1], weights[1, 0, 2] = 1.0, 1.0  # one allowed corner per image
    for crop_seed in range(5):
        crops = random_crops(images, 8, 4, torch.Generator().manual_seed(crop_seed), weights)
        assert torch.equal(crops[0], images[0, :, 8:16, 4:12])
        assert torch.equal(crops[1], images[1, :, 0:8, 8:16])
    # In proportion: 3 to 1 between two corners, over many draws.
    weights = torch.zeros(4000, 3, 3)
    weights[:, 0, 0], weights[:, 1, 1] = 3.0, 1.0
    crops = random_crops(torch.arange(256.0).view(1, 1, 16, 16).expand(4000, 1, 16, 16), 8, 4,
                         torch.Generator().manual_seed(0), weights)  # fmt: skip
    at_origin = (crops[:, 0, 0, 0] == 0).float().mean().item()
    assert 0.72 < at_origin < 0.78
