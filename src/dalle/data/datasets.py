"""Image-caption sources: a folder, WebDataset tar shards, and the Shapes World stream.

Every source yields samples ``{"image": uint8 [3, S, S], "caption": str, "key": str,
"skipped": list[Skip]}``. A broken sample (unreadable image, empty caption, missing part)
never stops a run and is never dropped silently: it becomes a :class:`Skip` that rides
along with the next good sample, so that the counts reach the main process from any
DataLoader worker, and batches keep their size. :class:`SkipLog` adds them up and prints
what was skipped and why.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import braceexpand
import torch
import webdataset as wds
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    get_worker_info,
)

from dalle.data.images import IMAGE_EXTENSIONS, load_image
from dalle.data.shapes_world import SPLIT_CODES, render_scene, sample_caption, sample_scene

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where image-caption pairs come from and how they are batched."""

    # "shapes" (Shapes World train split), "shapes:zeroshot", a folder of images with
    # same-stem .txt captions, or WebDataset tar shards ("data/train-{000..009}.tar").
    source: str = "shapes"
    image_size: int = 64
    batch_size: int = 32
    num_workers: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 1000  # WebDataset: samples held for shuffling
    seed: int = 0
    # Shapes World: first sample index and samples per epoch (None: an endless stream).
    start: int = 0
    count: int | None = None
    # WebDataset samples with a .json part but no .txt: keys tried for the caption.
    caption_keys: list[str] = field(default_factory=lambda: ["caption", "text"])
    # "all", or "train" / "holdout": a stable split by a hash of each sample's key (for
    # Shapes World, holdout samples come from a far-off index range instead).
    subset: str = "all"
    holdout_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.subset not in ("all", "train", "holdout"):
            raise ValueError(f"subset must be all, train or holdout, not {self.subset!r}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), not {self.holdout_fraction}")


# Shapes World holdout samples start here, far beyond any training run's indices.
SHAPES_HOLDOUT_START = 1_000_000_000


def in_subset(key: str, subset: str, holdout_fraction: float) -> bool:
    """Whether a sample belongs to ``subset``, by a hash of its key stable across runs."""
    if subset == "all":
        return True
    held_out = zlib.crc32(key.encode("utf-8")) % 1_000_000 < holdout_fraction * 1_000_000
    return held_out == (subset == "holdout")


@dataclass(frozen=True)
class Skip:
    key: str
    reason: str


class SkipLog:
    """Counts skipped samples by reason, with a few example keys per reason."""

    def __init__(self, examples_per_reason: int = 3) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._keep = examples_per_reason

    def add(self, skips: list[Skip]) -> None:
        for skip in skips:
            self.counts[skip.reason] += 1
            examples = self.examples.setdefault(skip.reason, [])
            if len(examples) < self._keep:
                examples.append(skip.key)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "skipped 0 samples"
        lines = [f"skipped {self.total} samples:"]
        for reason, count in self.counts.most_common():
            lines.append(f"  {count:>7}  {reason}  (e.g. {', '.join(self.examples[reason])})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}


def _decode(key: str, image: bytes | Path | None, caption: str | None, size: int):
    """A sample dict, or a Skip saying why there is none."""
    if image is None:
        return Skip(key, "missing image")
    if caption is None:
        return Skip(key, "missing caption")
    caption = caption.strip()
    if not caption:
        return Skip(key, "empty caption")
    try:
        tensor = load_image(image, size)
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on bad data
        return Skip(key, f"unreadable image ({type(err).__name__})")
    return {"image": tensor, "caption": caption, "key": key}


def _attach_skips(results) -> Iterator[dict]:
    """Yields the good samples, each carrying the Skips that came just before it."""
    pending: list[Skip] = []
    for result in results:
        if isinstance(result, Skip):
            pending.append(result)
            continue
        result["skipped"] = pending
        pending = []
        yield result
    if pending:
        log.warning("%d samples at the end of the stream were skipped: %s", len(pending), pending)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------- folder


class ImageTextFolder(Dataset):
    """Images under ``root`` (recursive), each with a same-stem ``.txt`` caption.

    An image without a caption, or a caption without an image, is recorded in
    ``index_skips`` when the folder is indexed. An image that fails to decode is replaced
    by the next readable one, and the failure travels with that sample.
    """

    def __init__(
        self, root: str | Path, image_size: int, subset: str = "all", holdout_fraction: float = 0.1
    ) -> None:
        self.root = Path(root)
        self.image_size = image_size
        images: dict[Path, Path] = {}
        captions: set[Path] = set()
        for path in sorted(self.root.rglob("*")):
            suffix = path.suffix.lower().lstrip(".")
            if suffix in IMAGE_EXTENSIONS and path.is_file():
                images[path.with_suffix("")] = path
            elif suffix == "txt":
                captions.add(path.with_suffix(""))
        self.index_skips: list[Skip] = []
        self.items: list[tuple[Path, Path]] = []
        for stem, image in images.items():
            if not in_subset(str(image.relative_to(self.root)), subset, holdout_fraction):
                continue
            if stem in captions:
                self.items.append((image, stem.with_suffix(".txt")))
            else:
                self.index_skips.append(Skip(str(image.relative_to(self.root)), "missing caption"))
        for stem in sorted(captions - images.keys()):
            self.index_skips.append(
                Skip(str(stem.relative_to(self.root)) + ".txt", "missing image")
            )
        if not self.items:
            raise FileNotFoundError(
                f"no image with a same-stem .txt caption under {self.root} "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int):
        image, caption_path = self.items[index]
        key = str(image.relative_to(self.root))
        try:
            caption = caption_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            return Skip(key, f"unreadable caption ({type(err).__name__})")
        return _decode(key, image, caption, self.image_size)

    def __getitem__(self, index: int) -> dict:
        skipped: list[Skip] = []
        for offset in range(len(self.items)):
            result = self._load((index + offset) % len(self.items))
            if isinstance(result, Skip):
                # Only the requested index is recorded: a broken neighbour used as a
                # fallback is recorded when its own index comes up, so once per epoch.
                if offset == 0:
                    skipped.append(result)
                continue
            result["skipped"] = skipped
            return result
        raise RuntimeError(f"no readable image in {self.root}")


# ----------------------------------------------------------------------------- webdataset


def expand_shards(pattern: str) -> list[str]:
    """Expands brace patterns (``a-{000..009}.tar``) and checks that local shards exist."""
    shards: list[str] = []
    for part in pattern.split("::"):
        shards.extend(braceexpand.braceexpand(part))
    local = [s for s in shards if "://" not in s and not s.startswith("pipe:")]
    missing = [s for s in local if not os.path.exists(s)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(shards)} shards not found, e.g. {missing[0]}"
        )
    return shards


def caption_of(sample: dict, caption_keys: tuple[str, ...] | list[str]) -> str | None:
    """A WebDataset sample's caption: its txt part, else the first json key found."""
    if "txt" in sample:
        return sample["txt"].decode("utf-8", errors="replace")
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            return None
        for key in caption_keys:
            if isinstance(meta, dict) and isinstance(meta.get(key), str):
                return meta[key]
    return None


def _every_shard(shards: Iterator) -> Iterator:
    yield from shards


class WebDatasetSource(IterableDataset):
    """Image-caption samples from WebDataset tar shards, split by rank and worker.

    A sample's image is its first png/jpg/jpeg/webp part; its caption is the ``txt`` part,
    or else the first of ``caption_keys`` found in its ``json`` part.
    """

    def __init__(
        self,
        pattern: str,
        image_size: int,
        caption_keys: list[str] | tuple[str, ...] = ("caption", "text"),
        shuffle_buffer: int = 0,
        seed: int = 0,
        subset: str = "all",
        holdout_fraction: float = 0.1,
        split_by_rank: bool = False,
    ) -> None:
        self.shards = expand_shards(pattern)
        self.split_by_rank = split_by_rank
        world = _rank_and_world()[1]
        if split_by_rank and len(self.shards) < world:
            # A rank without a shard would wait forever for the others at the first step.
            raise ValueError(
                f"{len(self.shards)} WebDataset shard(s) cannot be split over {world} ranks: "
                "write the data set as at least as many shards as ranks"
            )
        self.subset, self.holdout_fraction = subset, holdout_fraction
        self.image_size = image_size
        self.caption_keys = tuple(caption_keys)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0

    def _results(self) -> Iterator[dict | Skip]:
        errors: list[Skip] = []

        def record(exn: Exception) -> bool:
            # Raised inside the tar reader (a truncated shard, say): count it, go on.
            errors.append(
                Skip(
                    str(getattr(exn, "args", [""])[-1])[:200],
                    f"unreadable shard data ({type(exn).__name__})",
                )
            )
            return True

        pipeline = wds.WebDataset(
            self.shards,
            handler=record,
            shardshuffle=len(self.shards) if self.shuffle_buffer else False,
            # Training ranks read disjoint shards; evaluation reads them all everywhere.
            nodesplitter=wds.split_by_node if self.split_by_rank else _every_shard,
            workersplitter=wds.split_by_worker,
            empty_check=False,
            seed=self.seed + self.epoch,
        )
        if self.shuffle_buffer:
            pipeline = pipeline.shuffle(self.shuffle_buffer, seed=self.seed + self.epoch)
        for sample in pipeline:
            yield from errors
            errors.clear()
            key = sample.get("__key__", "?")
            if not in_subset(key, self.subset, self.holdout_fraction):
                continue
            image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
            yield _decode(key, image, caption_of(sample, self.caption_keys), self.image_size)
        yield from errors

    def __iter__(self) -> Iterator[dict]:
        yield from _attach_skips(self._results())


# ----------------------------------------------------------------------------- shapes world


class ShapesWorldStream(IterableDataset):
    """Rendered Shapes World samples ``start, start + 1, ...`` split by worker (and, for
    training, by rank).

    Sample ``i`` is a pure function of ``(seed, split, i)``, so each rank and worker draws
    a disjoint, interleaved share of the indices and nothing is generated twice. With the
    global batch split evenly over ranks, step ``k`` then trains on samples
    ``k B .. (k + 1) B - 1`` however many ranks share them.
    """

    def __init__(
        self,
        image_size: int = 64,
        split: str = "train",
        seed: int = 0,
        start: int = 0,
        count: int | None = None,
        split_by_rank: bool = False,
    ) -> None:
        if split not in SPLIT_CODES:
            raise ValueError(
                f"unknown Shapes World split {split!r}; use one of {list(SPLIT_CODES)}"
            )
        self.image_size, self.split, self.seed = image_size, split, seed
        self.start, self.count = start, count
        self.split_by_rank = split_by_rank

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("an endless Shapes World stream has no length")
        return self.count

    def indices(self) -> Iterator[int]:
        rank, world = _rank_and_world() if self.split_by_rank else (0, 1)
        worker = get_worker_info()
        wid, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        stride, offset = world * workers, rank * workers + wid
        index = self.start + offset
        while self.count is None or index < self.start + self.count:
            yield index
            index += stride

    def __iter__(self) -> Iterator[dict]:
        for index in self.indices():
            scene = sample_scene(self.seed, index, self.image_size, self.split)  # type: ignore[arg-type]
            image = torch.from_numpy(render_scene(scene)).permute(2, 0, 1).contiguous()
            yield {
                "image": image,
                "caption": scene.caption,
                "key": f"{self.split}-{index:08d}",
                "skipped": [],
            }


# ----------------------------------------------------------------------------- entry points


def _shapes_split(source: str) -> str | None:
    if source == "shapes":
        return "train"
    if source.startswith("shapes:"):
        return source.split(":", 1)[1]
    return None


def open_source(config: DataConfig, split_by_rank: bool = False) -> Dataset | IterableDataset:
    """The dataset that ``config.source`` names; raises with a clear message otherwise.

    With ``split_by_rank`` (training under torchrun), each rank streams its own share;
    otherwise every process sees the whole source (evaluation).
    """
    split = _shapes_split(config.source)
    if split is not None:
        return ShapesWorldStream(config.image_size, split, config.seed, config.start,
                                 config.count, split_by_rank)  # fmt: skip
    path = Path(config.source)
    if path.is_dir():
        return ImageTextFolder(path, config.image_size)
    if ".tar" in config.source:
        buffer = config.shuffle_buffer if config.shuffle else 0
        return WebDatasetSource(config.source, config.image_size, config.caption_keys, buffer,
                                config.seed, split_by_rank=split_by_rank)  # fmt: skip
    raise FileNotFoundError(
        f"data source {config.source!r} is neither 'shapes[:split]', a folder, nor .tar shards"
    )


@dataclass
class Batch:
    images: torch.Tensor  # uint8 [B, 3, S, S]
    captions: list[str]
    keys: list[str]
    skipped: list[Skip]


def collate(samples: list[dict]) -> Batch:
    return Batch(
        images=torch.stack([s["image"] for s in samples]),
        captions=[s["caption"] for s in samples],
        keys=[s["key"] for s in samples],
        skipped=[skip for s in samples for skip in s["skipped"]],
    )


def make_loader(
    dataset: Dataset | IterableDataset,
    config: DataConfig,
    drop_last: bool = False,
    split_by_rank: bool = False,
) -> DataLoader:
    """A DataLoader that collates to :class:`Batch`; map-style sets are shuffled by seed.

    ``config.batch_size`` is what each process gets. With ``split_by_rank``, a map-style
    set (a folder) is dealt out over the ranks; streams split themselves.
    """
    generator = torch.Generator().manual_seed(config.seed)
    shuffle = config.shuffle and not isinstance(dataset, IterableDataset)
    sampler = None
    rank, world = _rank_and_world()
    if split_by_rank and world > 1 and not isinstance(dataset, IterableDataset):
        sampler = DistributedSampler(dataset, world, rank, shuffle=shuffle, seed=config.seed,
                                     drop_last=True)  # fmt: skip
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        # Always our own generator: creating the loader then never draws from the global
        # RNG, which keeps training randomness identical across a resume.
        generator=generator,
        persistent_workers=False,
    )


def new_skip_log(dataset: Dataset | IterableDataset) -> SkipLog:
    """A SkipLog that already holds what indexing the dataset found missing."""
    skip_log = SkipLog()
    skip_log.add(getattr(dataset, "index_skips", []))
    return skip_log


def load_images(data: DataConfig, count: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``count`` images (uint8 ``[N, 3, S, S]``) and captions of a source."""
    config = replace(data, shuffle=False, num_workers=0, batch_size=64)
    images, captions = [], []
    for batch in make_loader(open_source(config), config):
        images.append(batch.images)
        captions += batch.captions
        if len(captions) >= count:
            break
    if not images:
        raise ValueError(f"no held-out images in {data.source} (subset {data.subset})")
    return torch.cat(images)[:count], captions[:count]


def iter_captions(config: DataConfig, limit: int | None = None) -> Iterator[str]:
    """Captions of a source without decoding images (for tokenizer training)."""
    split = _shapes_split(config.source)
    if split is not None:
        count = limit if limit is not None else config.count
        if count is None:
            raise ValueError("an endless Shapes World stream needs a caption limit")
        for index in range(config.start, config.start + count):
            yield sample_caption(config.seed, index, split)  # type: ignore[arg-type]
        return
    produced = 0
    path = Path(config.source)
    if path.is_dir():
        texts = (
            p.read_text(encoding="utf-8", errors="replace") for p in sorted(path.rglob("*.txt"))
        )
    else:
        shards = wds.WebDataset(
            expand_shards(config.source), shardshuffle=False, empty_check=False,
            handler=wds.warn_and_continue,
        )  # fmt: skip
        texts = (c for s in shards if (c := caption_of(s, config.caption_keys)) is not None)
    for text in texts:
        if text.strip():
            yield text.strip()
            produced += 1
            if limit is not None and produced >= limit:
                return
