"""Writes Shapes World to disk: a folder of PNG + TXT + JSON, or WebDataset tar shards."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import webdataset as wds
from PIL import Image

from dalle.data.shapes_world import Split, render_scene, sample_scene


def _encode_sample(args: tuple[int, int, int, str]) -> tuple[bytes, str, str]:
    """Renders sample ``index``: (PNG bytes, caption, scene JSON)."""
    seed, index, size, split = args
    scene = sample_scene(seed, index, size, split)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    Image.fromarray(render_scene(scene)).save(buffer, format="PNG")
    return buffer.getvalue(), scene.caption, json.dumps(scene.to_json(), sort_keys=True)


def _encoded(
    seed: int, count: int, size: int, split: str, workers: int
) -> Iterator[tuple[bytes, str, str]]:
    jobs = ((seed, i, size, split) for i in range(count))
    if workers <= 1:
        yield from map(_encode_sample, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_encode_sample, jobs, chunksize=64)


def write_shapes_world(
    out: str | Path,
    count: int,
    size: int = 64,
    split: Split = "train",
    seed: int = 0,
    fmt: str = "folder",
    shard_size: int = 10_000,
    workers: int = 1,
) -> list[Path]:
    """Writes samples ``0 .. count-1`` of ``(seed, split)`` and returns the files written.

    ``folder`` writes ``NNNNNN.png``, ``NNNNNN.txt`` (caption) and ``NNNNNN.json`` (scene);
    ``wds`` writes the same three parts per sample into ``shapes-NNNNNN.tar`` shards. Both
    are byte-identical for the same arguments (tar members carry a fixed mtime).
    """
    if fmt not in ("folder", "wds"):
        raise ValueError(f"unknown format {fmt!r}; use 'folder' or 'wds'")
    if count < 1 or size < 8:
        raise ValueError(f"need count >= 1 and size >= 8, got count={count}, size={size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    samples = _encoded(seed, count, size, split, workers)
    if fmt == "folder":
        for index, (png, caption, scene) in enumerate(samples):
            stem = out / f"{index:06d}"
            for suffix, data in (
                (".png", png),
                (".txt", caption.encode()),
                (".json", scene.encode()),
            ):
                stem.with_suffix(suffix).write_bytes(data)
            written.append(stem.with_suffix(".png"))
        return written
    writer = None
    for index, (png, caption, scene) in enumerate(samples):
        if index % shard_size == 0:
            if writer is not None:
                writer.close()
            written.append(out / f"shapes-{index // shard_size:06d}.tar")
            writer = wds.TarWriter(str(written[-1]), mtime=0.0)
        assert writer is not None
        writer.write({"__key__": f"{index:06d}", "png": png, "txt": caption, "json": scene})
    if writer is not None:
        writer.close()
    return written
