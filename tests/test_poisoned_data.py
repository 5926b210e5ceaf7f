"""A poisoned data set, as a tar and as a folder: every unusable sample is skipped and
counted with its reason, every usable one is kept and decoded correctly, and reading it
costs no more memory than clean data."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle.cli import main
from dalle.data.datasets import DataConfig, make_loader, new_skip_log, open_source

SIZE = 16
RED, BLUE = (230, 20, 20), (20, 20, 230)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` grey pixels (a decompression bomb when large);
    with ``rows`` it is a whole, valid image of zeros, compressed as it is generated."""
    return _png(width, height, rows=False)


def _png(width: int, height: int, rows: bool = True) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor, data = zlib.compressobj(9), b""
    if rows:
        row = b"\x00" * (width + 1)  # filter byte + grey pixels
        data = b"".join(compressor.compress(row) for _ in range(height))
    data += compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def _gray16(value: int) -> bytes:
    return _encode(Image.fromarray(np.full((8, 8), value, np.uint16)), "PNG")


def _exif_rotated() -> bytes:
    """Stored as 16x8 with red on the left, blue on the right, and EXIF orientation 6
    (rotate 90 degrees clockwise to view): upright, red is on top."""
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8], pixels[:, 8:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


def _palette() -> bytes:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, *BLUE] + [0] * 762)
    return _encode(image, "PNG")


def good_samples() -> dict[str, tuple[bytes, bytes, str]]:
    """key -> (image, caption, image extension) of samples a loader must keep."""
    red = Image.new("RGB", (12, 12), RED)
    return {
        "plain": (_encode(red, "PNG"), b"a red square", "png"),
        "cmyk": (_encode(Image.new("CMYK", (8, 8), (0, 230, 230, 20)), "JPEG"), b"cmyk red", "jpg"),
        "palette": (_palette(), b"a blue palette square", "png"),
        "gray16": (_gray16(30000), b"a grey square", "png"),
        "exif": (_exif_rotated(), b"red above blue", "jpg"),
        "longcap": (_encode(red, "WEBP"), b"very long " * 1000, "webp"),
    }


def bad_samples() -> dict[str, tuple[bytes | None, bytes | None, str, str]]:
    """key -> (image, caption, extension, reason the loader must give)."""
    png = _encode(Image.new("RGB", (12, 12), RED), "PNG")
    return {
        "truncated": (png[: len(png) // 2], b"cut short", "png", "unreadable image"),
        "zerobyte": (b"", b"empty file", "png", "unreadable image"),
        "random": (os.urandom(512), b"noise", "jpg", "unreadable image"),
        "bomb": (_png_header_only(30000, 30000), b"a bomb", "png", "image too large"),
        "huge": (_png(12000, 12000), b"twelve thousand square", "png", "image too large"),
        "emptycap": (png, b"", "png", "empty caption"),
        "spacecap": (png, b"  \n\t ", "png", "empty caption"),
        "latin1": (png, "café au lait".encode("latin-1"), "png", "caption is not UTF-8"),
        "noimage": (None, b"a caption alone", "png", "missing image"),
        "nocaption": (png, None, "png", "missing caption"),
    }


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar_set(folder: Path, poisoned: bool) -> str:
    """Shards of the good samples, and with ``poisoned`` every bad one, a duplicate key, a
    duplicated part, a shard cut short at a file boundary and one cut inside a file."""
    folder.mkdir(parents=True)
    with tarfile.open(folder / "set-000.tar", "w") as tar:
        for key, (image, caption, ext) in good_samples().items():
            _tar_member(tar, f"{key}.{ext}", image)
            _tar_member(tar, f"{key}.txt", caption)
        if poisoned:
            for key, (image, caption, ext, _) in bad_samples().items():
                if image is not None:
                    _tar_member(tar, f"{key}.{ext}", image)
                if caption is not None:
                    _tar_member(tar, f"{key}.txt", caption)
            _tar_member(tar, "plain.png", b"a second sample with the key plain")
            _tar_member(tar, "plain.txt", b"a duplicate key")
            _tar_member(tar, "twice.png", good_samples()["plain"][0])
            _tar_member(tar, "twice.txt", b"first caption")
            _tar_member(tar, "twice.txt", b"second caption")
    if not poisoned:
        return str(folder / "set-000.tar")
    # Two more shards, each with one good sample before the cut.
    for index, cut_inside in ((1, False), (2, True)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            image, caption, ext = good_samples()["plain"]
            _tar_member(tar, f"kept{index}.{ext}", image)
            _tar_member(tar, f"kept{index}.txt", caption)
            _tar_member(tar, f"lost{index}.png", os.urandom(3000))
        data = buffer.getvalue()
        end = 512 * 2 + 512 * ((len(image) + 511) // 512) + 512 * ((len(caption) + 511) // 512)
        (folder / f"set-00{index}.tar").write_bytes(data[: end + 1000 if cut_inside else end])
    return str(folder / "set-{000..002}.tar")


def write_folder_set(folder: Path, poisoned: bool) -> str:
    folder.mkdir(parents=True)
    for key, (image, caption, ext) in good_samples().items():
        (folder / f"{key}.{ext}").write_bytes(image)
        (folder / f"{key}.txt").write_bytes(caption)
    if poisoned:
        for key, (image, caption, ext, _) in bad_samples().items():
            if image is not None:
                (folder / f"{key}.{ext}").write_bytes(image)
            if caption is not None:
                (folder / f"{key}.txt").write_bytes(caption)
        # Two images for one caption: which one it describes is unknown.
        (folder / "stem.png").write_bytes(good_samples()["plain"][0])
        (folder / "stem.jpg").write_bytes(good_samples()["cmyk"][0])
        (folder / "stem.txt").write_bytes(b"one caption, two images")
    return str(folder)


def expected_skips(kind: str) -> Counter[str]:
    reasons = Counter(reason for *_, reason in bad_samples().values())
    if kind == "tar":
        # Both cut shards lack the end-of-archive marker; the one cut inside a file also
        # fails to read there, which is the same loss and is not counted twice.
        reasons.update({"duplicate key in shard": 1, "part .txt twice in one sample": 1,
                        "shard cut short (no end-of-archive marker)": 2})  # fmt: skip
    else:
        reasons.update({"same stem as another image (kept stem.jpg)": 1})
    return reasons


def _read(source: str):
    config = DataConfig(source=source, image_size=SIZE, batch_size=4, shuffle=False)
    dataset = open_source(config)
    skips = new_skip_log(dataset)
    samples = {}
    for batch in make_loader(dataset, config):
        skips.add(batch.skipped)
        for key, image, caption in zip(batch.keys, batch.images, batch.captions, strict=True):
            assert key not in samples, f"{key} read twice"
            samples[key] = (image, caption)
    return samples, skips


@pytest.mark.parametrize("kind", ["tar", "folder"])
def test_every_bad_sample_is_skipped_with_its_reason_and_every_good_one_kept(
    tmp_path: Path, kind: str
) -> None:
    writer = write_tar_set if kind == "tar" else write_folder_set
    samples, skips = _read(writer(tmp_path / kind, poisoned=True))
    found: Counter[str] = Counter()
    for reason, count in skips.counts.items():
        found[_reason(reason)] += count
    assert found == expected_skips(kind), skips.summary()
    keys = {Path(k).stem for k in samples}
    extra = {"kept1", "kept2"} if kind == "tar" else {"stem"}
    assert keys == set(good_samples()) | extra
    by_key = {Path(k).stem: v for k, v in samples.items()}
    _assert_decoded_correctly(by_key)


def _reason(reason: str) -> str:
    # "unreadable image (UnidentifiedImageError)" and the like count as one reason here.
    for general in ("unreadable image", "image too large"):
        if reason.startswith(general):
            return general
    return reason


def _assert_decoded_correctly(samples: dict) -> None:
    def mean_colour(key: str, rows: slice = slice(None)) -> np.ndarray:
        return samples[key][0][:, rows].float().mean(dim=(1, 2)).numpy()

    assert np.allclose(mean_colour("plain"), RED, atol=2)
    assert np.allclose(mean_colour("cmyk"), [230, 20, 20], atol=25)  # CMYK converted, lossy
    assert np.allclose(mean_colour("palette"), BLUE, atol=1)
    assert np.allclose(mean_colour("gray16"), 30000 / 257, atol=1)  # scaled, not clipped white
    # EXIF orientation applied: red on top, blue at the bottom.
    assert np.allclose(mean_colour("exif", slice(0, 5)), RED, atol=30)
    assert np.allclose(mean_colour("exif", slice(SIZE - 5, SIZE)), BLUE, atol=30)
    assert samples["longcap"][1] == ("very long " * 1000).strip()


def test_tokenizer_training_counts_the_same_caption_skips(tmp_path: Path, capsys) -> None:
    source = write_tar_set(tmp_path / "tar", poisoned=True)
    # Every sample (by default a tokenizer reads the train subset, where some may not be).
    assert main(["tokenizer", "train", "--data", source, "--out", str(tmp_path / "tok"),
                 "--vocab-size", "300", "--max-length", "16", "data.subset=all"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "caption is not UTF-8" in captured.out and "duplicate key in shard" in captured.out
    assert "missing caption" in captured.out  # a caption without an image still counts
    assert "warn" not in captured.err.lower()  # no raw WebDataset warnings
    assert "1 of " in captured.out  # the long caption would be cut


def test_skips_at_the_end_of_a_stream_reach_data_check_and_training_metrics(
    tmp_path: Path, capsys
) -> None:
    source = write_tar_set(tmp_path / "tar", poisoned=True)
    capsys.readouterr()
    assert main(["data", "check", source, "--size", str(SIZE), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == len(good_samples()) + 2
    assert report["skipped"]["total"] == sum(expected_skips("tar").values())
    assert report["skipped"]["by_reason"]["shard cut short (no end-of-archive marker)"] == 2
    run = tmp_path / "run"
    configs = Path(__file__).parent.parent / "configs"
    assert main(["train-vae", "--config", str(configs / "dvae-tiny-cpu.yaml"), "--data", source,
                 "--out", str(run), "--steps", "4", "data.image_size=16", "data.batch_size=2",
                 "data.shuffle_buffer=0", "data.holdout_fraction=0.5", "eval.samples=4",
                 "eval.grid=2"]) == 0  # fmt: skip
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    end = next(r for r in records if r.get("event") == "end")
    capsys.readouterr()
    check = ["data", "check", source, "--size", str(SIZE), "--json", "--subset", "train",
             "--holdout-fraction", "0.5"]  # fmt: skip
    assert main(check) == 0
    in_train = json.loads(capsys.readouterr().out)["skipped"]["by_reason"]
    # 4 updates of 2 cover at least the train subset's first epoch, its last skips included.
    for reason, count in in_train.items():
        assert end["skipped"]["by_reason"][reason] >= count, reason


PEAK_MEMORY = """
import resource, sys
from dalle.data.datasets import DataConfig, make_loader, open_source
config = DataConfig(source=sys.argv[1], image_size=16, batch_size=4, shuffle=False)
count = sum(len(batch) for batch in make_loader(open_source(config), config))
print(count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.parametrize("kind", ["tar", "folder"])
def test_poisoned_data_costs_no_more_memory_than_clean(tmp_path: Path, kind: str) -> None:
    writer = write_tar_set if kind == "tar" else write_folder_set
    peaks = {}
    for poisoned in (False, True):
        source = writer(tmp_path / f"{kind}-{poisoned}", poisoned=poisoned)
        result = subprocess.run([sys.executable, "-c", PEAK_MEMORY, source], capture_output=True,
                                text=True, check=True)  # fmt: skip
        count, peak_kib = map(int, result.stdout.split())
        assert count >= len(good_samples())
        peaks[poisoned] = peak_kib
    assert peaks[True] < 2 * peaks[False], peaks


def test_judge_counts_a_bomb_as_unreadable(tmp_path: Path, capsys) -> None:
    (tmp_path / "0000.png").write_bytes(_png_header_only(30000, 30000))
    (tmp_path / "0000.txt").write_text("a red circle")
    (tmp_path / "0001.png").write_bytes(_png(12000, 12000))
    (tmp_path / "0001.txt").write_text("a red circle")
    assert main(["judge", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [u["error"].split(" (")[0] for u in report["unreadable"]] == ["image too large"] * 2
