"""Image-caption sources: a folder, WebDataset tar shards, and the Shapes World stream.

Every source yields samples ``{"image": uint8 [3, S, S], "caption": str, "key": str,
"skipped": list[Skip]}``. A broken sample (unreadable or oversized image, empty or
non-UTF-8 caption, missing or duplicated part, duplicate key) never stops a run and is
never dropped silently: it becomes a :class:`Skip` that rides along with the next good
sample, or, where none follows, in a record of its own with ``image`` None that
:func:`collate` leaves out of the batch. So the counts reach the main process from any
DataLoader worker, and :class:`SkipLog` adds them up and prints what was skipped and why.
A bad sample is never replaced by another: each usable sample is read once an epoch.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    get_worker_info,
)

from dalle.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, UnreadableImage, load_image
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
    # "all", or "train" / "holdout": a stable split by a hash of each sample's key, the
    # same under any rank and worker split (for Shapes World, holdout samples come from a
    # far-off index range instead). Training reads "train"; held-out metrics "holdout".
    subset: str = "all"
    holdout_fraction: float = 0.1
    # Images of more pixels than this (after any reduced-scale JPEG decode) are skipped
    # before they are decoded, which bounds what one image may cost a worker.
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        for name in ("image_size", "batch_size", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be at least 1, not {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must not be negative, not {self.num_workers}")
        if self.subset not in ("all", "train", "holdout"):
            raise ValueError(f"subset must be all, train or holdout, not {self.subset!r}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), not {self.holdout_fraction}")


def training_data() -> Any:
    """A train config's ``data`` field: the train subset, so the holdout stays unseen."""
    return field(default_factory=lambda: DataConfig(subset="train"))


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


def caption_text(key: str, raw: bytes | str | None) -> str | Skip:
    """A caption as stored -> its stripped text, or a Skip saying why it is unusable. One
    rule for every source and for tokenizer training: a missing, empty or non-UTF-8
    caption is skipped, never kept with replacement characters."""
    if raw is None:
        return Skip(key, "missing caption")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Skip(key, "caption is not UTF-8")
    text = raw.strip()
    return text if text else Skip(key, "empty caption")


def _decode(
    key: str, image: bytes | Path | None, caption: bytes | str | None, size: int, max_pixels: int
):
    """A sample dict, or a Skip saying why there is none."""
    if image is None:
        return Skip(key, "missing image")
    text = caption_text(key, caption)
    if isinstance(text, Skip):
        return text
    try:
        tensor = load_image(image, size, max_pixels)
    except UnreadableImage as err:
        return Skip(key, err.reason)
    return {"image": tensor, "caption": text, "key": key}


# The part of a pre-tokenized sample that holds its token grid (a .npy array).
TOKENS_PART = "tokens.npy"


def _decode_tokens(key: str, data: bytes, caption: bytes | str | None):
    """A pre-tokenized sample dict (``tokens`` long ``[h, w]``), or a Skip."""
    text = caption_text(key, caption)
    if isinstance(text, Skip):
        return text
    try:
        grid = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as err:
        return Skip(key, f"unreadable tokens ({type(err).__name__})")
    if grid.ndim != 2:
        return Skip(key, f"tokens of shape {grid.shape}, not a grid")
    tokens = torch.from_numpy(grid.astype(np.int64))
    return {"image": None, "tokens": tokens, "caption": text, "key": key}


def skips_only(skips: list[Skip]) -> dict:
    """A record that carries skips and no sample (its key is None); :func:`collate` keeps
    only the skips."""
    return {"image": None, "caption": None, "key": None, "skipped": skips}


def _attach_skips(results) -> Iterator[dict]:
    """Yields the good samples, each carrying the Skips that came just before it; skips at
    the end of the stream come in a record of their own."""
    pending: list[Skip] = []
    for result in results:
        if isinstance(result, Skip):
            pending.append(result)
            continue
        result["skipped"] = pending
        pending = []
        yield result
    if pending:
        yield skips_only(pending)


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Each rank's share of a global batch, which must split evenly: a run's results then
    depend on the global batch, not on how many processes compute it."""
    if global_batch % world_size:
        raise ValueError(
            f"data.batch_size {global_batch} (the global batch) does not split evenly "
            f"over {world_size} ranks"
        )
    return global_batch // world_size


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------- folder


class ImageTextFolder(Dataset):
    """Images under ``root`` (recursive), each with a same-stem ``.txt`` caption.

    An image without a caption, a caption without an image, and a second image of the
    same stem (``a.png`` beside ``a.jpg``: which one the caption describes is unknown, so
    the first in name order is kept) are recorded in ``index_skips`` when the folder is
    indexed. An item that fails to decode yields a record with its Skip and no sample.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        subset: str = "all",
        holdout_fraction: float = 0.1,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.image_size, self.max_image_pixels = image_size, max_image_pixels
        images: dict[Path, Path] = {}
        captions: set[Path] = set()
        self.index_skips: list[Skip] = []
        for path in sorted(self.root.rglob("*")):
            suffix = path.suffix.lower().lstrip(".")
            if suffix in IMAGE_EXTENSIONS and path.is_file():
                stem = path.with_suffix("")
                if stem in images:
                    kept = images[stem].name
                    self.index_skips.append(
                        Skip(self._key(path), f"same stem as another image (kept {kept})")
                    )
                    continue
                images[stem] = path
            elif suffix == "txt":
                captions.add(path.with_suffix(""))
        self.items: list[tuple[Path, Path]] = []
        for stem, image in images.items():
            if not in_subset(self._key(image), subset, holdout_fraction):
                continue
            if stem in captions:
                self.items.append((image, stem.with_suffix(".txt")))
            else:
                self.index_skips.append(Skip(self._key(image), "missing caption"))
        for stem in sorted(captions - images.keys()):
            self.index_skips.append(Skip(self._key(stem) + ".txt", "missing image"))
        if not self.items:
            raise FileNotFoundError(
                f"no image with a same-stem .txt caption under {self.root} "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )

    def _key(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image, caption_path = self.items[index]
        key = self._key(image)
        try:
            caption = caption_path.read_bytes()
        except OSError as err:
            result = Skip(key, f"unreadable caption ({type(err).__name__})")
        else:
            result = _decode(key, image, caption, self.image_size, self.max_image_pixels)
        if isinstance(result, Skip):
            return skips_only([result])
        result["skipped"] = []
        return result


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


def caption_of(sample: dict, caption_keys: tuple[str, ...] | list[str]) -> bytes | str | None:
    """A WebDataset sample's caption: its txt part (bytes, decoded by :func:`_decode`),
    else the first of ``caption_keys`` found in its json part."""
    if "txt" in sample:
        return sample["txt"]
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


def unclosed_shards(shards: list[str]) -> list[str]:
    """Local shards that do not end with a tar end-of-archive marker (two zero blocks).

    A tar cut short exactly at a file boundary reads as a shorter, valid archive; only its
    missing marker shows that samples were lost.
    """
    unclosed = []
    for shard in shards:
        if "://" in shard or shard.startswith("pipe:"):
            continue
        with open(shard, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - 1024, 0))
            if size < 1024 or handle.read(1024).count(0) != 1024:
                unclosed.append(shard)
    return unclosed


def read_error(exn: Exception) -> Skip:
    """An error raised inside the tar reader (a truncated shard, say), as a Skip that
    names the shard; webdataset appends the shard's url to the exception's args."""
    paths = [a for a in exn.args[1:] if isinstance(a, str) and not a.startswith("<")]
    named = re.search(r"name='([^']+)'", " ".join(map(str, exn.args)))  # "@ <BufferedReader ...>"
    shard = paths[-1] if paths else named.group(1) if named else "?"
    return Skip(Path(shard).name, f"unreadable shard data ({type(exn).__name__})")


def group_parts(files: Iterator[dict]) -> Iterator[dict | Skip]:
    """Groups a tar's files into samples by key, like ``webdataset.group_by_keys``, but a
    sample with a part twice (which one is right is unknown) and a key seen before in the
    same shard become Skips rather than kept or raised.

    ``files`` is what ``webdataset.tariterators.tar_file_expander`` yields: ``{fname,
    data, __url__}`` per file and ``{}`` at the end of each shard.
    """
    seen: set[str] = set()
    sample: dict | None = None
    for file in files:
        if not file:  # end of a shard
            if sample is not None:
                yield _finish(sample, seen)
            sample, seen = None, set()
            continue
        key, ext = wds.tariterators.base_plus_ext(file["fname"])
        if key is None:
            continue  # a file name without an extension: not part of any sample
        ext = ext.lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield _finish(sample, seen)
            sample = {"__key__": key, "__url__": file["__url__"], "__repeated__": []}
        if ext in sample:
            sample["__repeated__"].append(ext)
        else:
            sample[ext] = file["data"]
    if sample is not None:
        yield _finish(sample, seen)


def _finish(sample: dict, seen: set[str]) -> dict | Skip:
    key = sample["__key__"]
    if key in seen:
        return Skip(key, "duplicate key in shard")
    seen.add(key)
    if sample["__repeated__"]:
        return Skip(key, f"part .{sample['__repeated__'][0]} twice in one sample")
    return sample


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
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
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
        self.image_size, self.max_image_pixels = image_size, max_image_pixels
        self.caption_keys = tuple(caption_keys)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        # Found once, reported once (by the main process) however many epochs are read;
        # the read errors at such a shard's cut are the same loss and are not counted again.
        self.unclosed = {Path(s).name for s in unclosed_shards(self.shards)}
        self.index_skips = [
            Skip(name, "shard cut short (no end-of-archive marker)")
            for name in sorted(self.unclosed)
        ]

    def read_error(self, exn: Exception) -> Skip | None:
        """A tar reader's error as a Skip naming its shard; None for a shard already
        reported as cut short (the error at its cut is the same loss)."""
        skip = read_error(exn)
        return None if skip.key in self.unclosed else skip

    def samples(self, record) -> Iterator[dict | Skip]:
        """This rank's and worker's raw samples (dicts of parts), in shuffled order;
        ``record(exception)`` is told of every read error and reading goes on."""
        seed = self.seed + self.epoch
        stages: list = [
            wds.SimpleShardList(self.shards),
            # Training ranks read disjoint shards; evaluation reads them all everywhere.
            wds.split_by_node if self.split_by_rank else _every_shard,
            wds.split_by_worker,
        ]
        if self.shuffle_buffer:
            stages.append(wds.shuffle(len(self.shards), seed=seed))
        stages += [
            wds.cache.StreamingOpen(handler=record),
            functools.partial(wds.tariterators.tar_file_expander, handler=record),
            group_parts,
        ]
        if self.shuffle_buffer:
            stages.append(wds.shuffle(self.shuffle_buffer, seed=seed))
        return iter(wds.DataPipeline(*stages))

    def _results(self) -> Iterator[dict | Skip]:
        errors: list[Skip] = []

        def record(exn: Exception) -> bool:
            errors.extend(s for s in [self.read_error(exn)] if s is not None)
            return True

        for sample in self.samples(record):
            yield from errors
            errors.clear()
            if isinstance(sample, Skip):
                yield sample
                continue
            key = sample["__key__"]
            if not in_subset(key, self.subset, self.holdout_fraction):
                continue
            caption = caption_of(sample, self.caption_keys)
            if TOKENS_PART in sample:  # a pre-tokenized shard (`dalle tokenize-data`)
                yield _decode_tokens(key, sample[TOKENS_PART], caption)
                continue
            image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
            yield _decode(key, image, caption, self.image_size, self.max_image_pixels)
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


def shapes_start(start: int, count: int | None, subset: str) -> int:
    """The first Shapes World index a subset reads: holdout samples come from indices
    ``SHAPES_HOLDOUT_START`` on, which no training run reaches (a train range that would
    is an error)."""
    if subset == "holdout":
        return SHAPES_HOLDOUT_START + start
    end = start + count if count is not None else None
    if subset == "train" and (start >= SHAPES_HOLDOUT_START or (end or 0) > SHAPES_HOLDOUT_START):
        raise ValueError(
            f"Shapes World training indices must stay below {SHAPES_HOLDOUT_START:,}, "
            "where the holdout subset begins"
        )
    return start


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
        return ShapesWorldStream(config.image_size, split, config.seed,
                                 shapes_start(config.start, config.count, config.subset),
                                 config.count, split_by_rank)  # fmt: skip
    path = Path(config.source)
    subset = {"subset": config.subset, "holdout_fraction": config.holdout_fraction}
    if path.is_dir():
        return ImageTextFolder(path, config.image_size, **subset,
                               max_image_pixels=config.max_image_pixels)  # fmt: skip
    if ".tar" in config.source:
        buffer = config.shuffle_buffer if config.shuffle else 0
        return WebDatasetSource(config.source, config.image_size, config.caption_keys, buffer,
                                config.seed, **subset, split_by_rank=split_by_rank,
                                max_image_pixels=config.max_image_pixels)  # fmt: skip
    raise FileNotFoundError(
        f"data source {config.source!r} is neither 'shapes[:split]', a folder, nor .tar shards"
    )


@dataclass
class Batch:
    images: torch.Tensor  # uint8 [B, 3, S, S]; [0] when the source holds tokens, or all skips
    captions: list[str]
    keys: list[str]
    skipped: list[Skip]
    tokens: torch.Tensor | None = None  # long [B, h, w], from pre-tokenized shards

    def __len__(self) -> int:
        return len(self.captions)


def _stack(tensors: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    return torch.cat(tensors) if tensors else empty


def collate(samples: list[dict]) -> Batch:
    """Stacks the samples; records that only carry skips add their skips and nothing else."""
    kept = [s for s in samples if s["key"] is not None]
    images = [s["image"][None] for s in kept if s.get("image") is not None]
    tokens = [s["tokens"][None] for s in kept if s.get("tokens") is not None]
    return Batch(
        images=_stack(images, torch.empty(0, dtype=torch.uint8)),
        captions=[s["caption"] for s in kept],
        keys=[s["key"] for s in kept],
        skipped=[skip for s in samples for skip in s["skipped"]],
        tokens=_stack(tokens, torch.empty(0, dtype=torch.long)) if tokens else None,
    )


def concat(batches: list[Batch]) -> Batch:
    """One batch of all of ``batches``' samples and skips, in order."""
    tokens = [b.tokens for b in batches if b.tokens is not None and len(b)]
    return Batch(
        images=_stack(
            [b.images for b in batches if len(b.images)], torch.empty(0, dtype=torch.uint8)
        ),
        captions=[c for b in batches for c in b.captions],
        keys=[k for b in batches for k in b.keys],
        skipped=[s for b in batches for s in b.skipped],
        tokens=torch.cat(tokens) if tokens else None,
    )


def rebatch(batches: Iterator[Batch], size: int) -> Iterator[Batch]:
    """Batches of exactly ``size`` samples from batches of any size, in the same order,
    then one shorter batch with what is left (possibly only skips), if anything is.

    A loader's batch is short when some of its records were skips, or at the end of a
    worker's stream; training needs full ones. Each batch carries the skips that arrived
    since the one before, so none is lost with the short remainder.
    """
    pending: list[Batch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += len(batch)
        while held >= size:
            whole = concat(pending)
            first = _slice(whole, 0, size)
            first.skipped = whole.skipped
            yield first
            pending = [_slice(whole, size, held)]
            held -= size
    rest = concat(pending)
    if len(rest) or rest.skipped:
        yield rest


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    tokens = batch.tokens[start:stop] if batch.tokens is not None else None
    return Batch(batch.images[start:stop], batch.captions[start:stop], batch.keys[start:stop], [],
                 tokens)  # fmt: skip


def make_loader(
    dataset: Dataset | IterableDataset,
    config: DataConfig,
    drop_last: bool = False,
    split_by_rank: bool = False,
) -> DataLoader:
    """A DataLoader that collates to :class:`Batch`; map-style sets are shuffled by seed.

    ``config.batch_size`` is the global batch, as everywhere. With ``split_by_rank``, the
    data are dealt out over the ranks (a map-style set here; streams split themselves)
    and each process gets its share of every batch; without, each process reads all.
    """
    generator = torch.Generator().manual_seed(config.seed)
    shuffle = config.shuffle and not isinstance(dataset, IterableDataset)
    sampler = None
    rank, world = _rank_and_world()
    batch_size = local_batch_size(config.batch_size, world) if split_by_rank else config.batch_size
    if split_by_rank and world > 1 and not isinstance(dataset, IterableDataset):
        sampler = DistributedSampler(dataset, world, rank, shuffle=shuffle, seed=config.seed,
                                     drop_last=True)  # fmt: skip
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
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


def load_samples(data: DataConfig, count: int) -> Batch:
    """The first ``count`` usable samples of a source, as one batch (images, or tokens for
    pre-tokenized shards)."""
    config = replace(data, shuffle=False, num_workers=0, batch_size=64)
    batches, held = [], 0
    for batch in make_loader(open_source(config), config):
        if len(batch):
            batches.append(batch)
            held += len(batch)
        if held >= count:
            break
    if not batches:
        share = f", {data.holdout_fraction:.0%} of keys" if data.subset == "holdout" else ""
        raise ValueError(f"no usable samples in the {data.subset} subset of {data.source}{share}; "
                         "a larger data set or data.holdout_fraction gives some")  # fmt: skip
    return _slice(concat(batches), 0, count)


def load_images(data: DataConfig, count: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``count`` images (uint8 ``[N, 3, S, S]``) and captions of a source."""
    batch = load_samples(data, count)
    if batch.tokens is not None:
        raise ValueError(f"{data.source} holds image tokens, not images")
    return batch.images, batch.captions


def iter_captions(
    config: DataConfig, limit: int | None = None, skip_log: SkipLog | None = None
) -> Iterator[str]:
    """Captions of a source without decoding images (for tokenizer training), by the same
    rules as the image loaders: empty and non-UTF-8 captions are skipped and counted in
    ``skip_log``, and so are a tar's duplicate keys and read errors. Only captions of
    ``config.subset`` are read, so a tokenizer trained on the train subset never sees a
    held-out caption."""
    skip_log = skip_log if skip_log is not None else SkipLog()
    split = _shapes_split(config.source)
    if split is not None:
        count = limit if limit is not None else config.count
        if count is None:
            raise ValueError("an endless Shapes World stream needs a caption limit")
        first = shapes_start(config.start, count, config.subset)
        for index in range(first, first + count):
            yield sample_caption(config.seed, index, split)  # type: ignore[arg-type]
        return
    produced = 0
    for key, raw in _raw_captions(config, skip_log):
        if not in_subset(key, config.subset, config.holdout_fraction):
            continue
        text = caption_text(key, raw)
        if isinstance(text, Skip):
            skip_log.add([text])
            continue
        yield text
        produced += 1
        if limit is not None and produced >= limit:
            return


def _raw_captions(
    config: DataConfig, skip_log: SkipLog
) -> Iterator[tuple[str, bytes | str | None]]:
    """(key, caption as stored) of every sample of a folder or of tar shards."""
    path = Path(config.source)
    if path.is_dir():
        for text in sorted(path.rglob("*.txt")):
            key = str(text.relative_to(path))
            try:
                yield key, text.read_bytes()
            except OSError as err:
                skip_log.add([Skip(key, f"unreadable caption ({type(err).__name__})")])
        return
    if ".tar" not in config.source:
        raise FileNotFoundError(
            f"data source {config.source!r} is neither 'shapes[:split]', a folder, nor .tar shards"
        )
    source = WebDatasetSource(config.source, config.image_size, config.caption_keys)
    skip_log.add(source.index_skips)

    def record(exn: Exception) -> bool:
        skip_log.add([s for s in [source.read_error(exn)] if s is not None])
        return True

    for sample in source.samples(record):
        if isinstance(sample, Skip):
            skip_log.add([sample])
        else:
            yield sample["__key__"], caption_of(sample, config.caption_keys)
