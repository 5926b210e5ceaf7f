"""Judges whether an image shows what its Shapes World caption says.

Follows the judging rules of ``docs/shapes-world.md``: objects are the 8-connected
components of non-white pixels, then color, shape, size, grid cell and relation are read
off each component and compared with what the caption states.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from dalle.data.images import open_rgb
from dalle.data.shapes_world import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES, shape_coverage

ATTRIBUTES: tuple[str, ...] = ("count", "color", "shape", "size", "position", "relation")
WHITE_THRESHOLD = 60  # largest channel difference from white that still counts as background
MIN_COMPONENT_FRACTION = 0.05  # components below (0.05 N)^2 pixels are specks
SMALL_LARGE_SPLIT = 0.36  # bounding-box larger side below 0.36 N is "small"

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # [7, 3]
_PALETTE_NAMES = list(COLORS)


# ----------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class ObjectClaim:
    """What a caption says about one object; None where it says nothing."""

    color: str
    shape: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class CaptionClaims:
    objects: tuple[ObjectClaim, ...]
    relation: str | None = None  # a key of RELATIONS: objects[0] <relation> objects[1]

    @property
    def stated(self) -> tuple[str, ...]:
        out = ["count", "color", "shape"]
        if any(o.size for o in self.objects):
            out.append("size")
        if any(o.position for o in self.objects):
            out.append("position")
        if self.relation:
            out.append("relation")
        return tuple(out)


def _alt(words: Iterable[str]) -> str:
    # Longest first, so "top left" wins over "top".
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


_SIZE, _COLOR, _SHAPE, _POS = _alt(SIZES), _alt(COLORS), _alt(SHAPES), _alt(POSITIONS)
_REL = _alt(RELATIONS.values())
_OBJ = rf"a (?:(?P<size{{i}}>{_SIZE}) )?(?P<color{{i}}>{_COLOR}) (?P<shape{{i}}>{_SHAPE})"
_SINGLE_PATTERNS = (
    re.compile(rf"^{_OBJ.format(i=1)}(?: in the (?P<pos>{_POS}))?$"),
    re.compile(rf"^there is {_OBJ.format(i=1)} in the (?P<pos>{_POS})$"),
    re.compile(rf"^(?P<pos>{_POS}): {_OBJ.format(i=1)}$"),
)
_PAIR_PATTERN = re.compile(rf"^{_OBJ.format(i=1)} (?P<rel>{_REL}) {_OBJ.format(i=2)}$")
_RELATION_BY_WORDS = {words: key for key, words in RELATIONS.items()}


def parse_caption(caption: str) -> CaptionClaims:
    """Parses a caption of the Shapes World grammar; raises ValueError for anything else."""
    text = caption.strip()
    for pattern in _SINGLE_PATTERNS:
        m = pattern.match(text)
        if m:
            claim = ObjectClaim(m["color1"], m["shape1"], m["size1"], m["pos"])
            return CaptionClaims((claim,))
    m = _PAIR_PATTERN.match(text)
    if m:
        a = ObjectClaim(m["color1"], m["shape1"], m["size1"])
        b = ObjectClaim(m["color2"], m["shape2"], m["size2"])
        return CaptionClaims((a, b), _RELATION_BY_WORDS[m["rel"]])
    raise ValueError(f"not a Shapes World caption: {caption!r}")


def content_only(claims: CaptionClaims) -> CaptionClaims:
    """The claims with size, position and relation left out: what an image shows (count,
    and each object's colour and shape together), not where. A variation of an image may
    move and resize its objects; this is what it must keep."""
    return CaptionClaims(tuple(ObjectClaim(o.color, o.shape) for o in claims.objects))


# ----------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class DetectedObject:
    color: str
    shape: str
    size: str
    position: str
    center: tuple[float, float]  # bounding-box centre, canvas pixels (x, y)
    bbox: tuple[int, int, int, int]  # (col0, row0, col1, row1), end exclusive
    pixels: int


def _classify_shape(component: np.ndarray, bbox: tuple[int, int, int, int], n: int) -> str:
    """The shape whose mask, drawn in the square box on the component's bbox, fits best."""
    c0, r0, c1, r1 = bbox
    side = max(c1 - c0, r1 - r0)
    cx, cy = (c0 + c1) / 2, (r0 + r1) / 2
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    # A window holding both the component and the square box (which may leave the canvas).
    window = (
        min(c0, int(np.floor(box[0]))),
        min(r0, int(np.floor(box[1]))),
        max(c1, int(np.ceil(box[2]))),
        max(r1, int(np.ceil(box[3]))),
    )
    wc0, wr0, wc1, wr1 = window
    target = np.zeros((wr1 - wr0, wc1 - wc0), dtype=bool)
    target[r0 - wr0 : r1 - wr0, c0 - wc0 : c1 - wc0] = component
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        mask = shape_coverage(shape, box, window) >= 0.5
        union = np.logical_or(mask, target).sum()
        iou = np.logical_and(mask, target).sum() / max(union, 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def detect_objects(image: np.ndarray) -> list[DetectedObject]:
    """Finds the objects in an ``[N, N, 3]`` uint8 image, largest first."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square RGB image [N, N, 3], got shape {image.shape}")
    n = image.shape[0]
    foreground = (255 - image.astype(np.int16)).max(axis=2) > WHITE_THRESHOLD
    labels, _ = ndimage.label(foreground, structure=np.ones((3, 3), dtype=bool))
    min_pixels = (MIN_COMPONENT_FRACTION * n) ** 2
    objects = []
    for label, slices in enumerate(ndimage.find_objects(labels), start=1):
        if slices is None:
            continue
        rows, cols = slices
        component = labels[slices] == label
        pixels = int(component.sum())
        if pixels < min_pixels:
            continue
        colors = image[slices][component].astype(np.float32)  # [P, 3]
        median = np.median(colors, axis=0)
        color = _PALETTE_NAMES[int(np.argmin(((_PALETTE - median) ** 2).sum(axis=1)))]
        bbox = (cols.start, rows.start, cols.stop, rows.stop)
        cx, cy = (cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2
        larger_side = max(cols.stop - cols.start, rows.stop - rows.start)
        cell = 3 * min(int(cy // (n / 3)), 2) + min(int(cx // (n / 3)), 2)
        objects.append(
            DetectedObject(
                color=color,
                shape=_classify_shape(component, bbox, n),
                size="small" if larger_side < SMALL_LARGE_SPLIT * n else "large",
                position=POSITIONS[cell],
                center=(cx, cy),
                bbox=bbox,
                pixels=pixels,
            )
        )
    objects.sort(key=lambda o: -o.pixels)
    return objects


# ----------------------------------------------------------------------------- verdicts


@dataclass
class Verdict:
    """The judgement of one image: which stated attributes hold."""

    caption: str
    passed: bool
    checks: dict[str, bool]  # attribute -> holds, only for attributes the caption states
    detected: list[DetectedObject] = field(default_factory=list)


def _relation_holds(relation: str, a: DetectedObject, b: DetectedObject) -> bool:
    (ax, ay), (bx, by) = a.center, b.center
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


def _checks_for(claims: CaptionClaims, assigned: list[DetectedObject | None]) -> dict[str, bool]:
    checks: dict[str, bool] = {}
    for attribute in ("color", "shape", "size", "position"):
        stated = [
            (c, d) for c, d in zip(claims.objects, assigned, strict=True) if getattr(c, attribute)
        ]
        if stated:
            checks[attribute] = all(
                d is not None and getattr(d, attribute) == getattr(c, attribute) for c, d in stated
            )
    if claims.relation:
        a, b = assigned
        checks["relation"] = (
            a is not None and b is not None and _relation_holds(claims.relation, a, b)
        )
    return checks


def judge_image(image: np.ndarray, caption: str | CaptionClaims) -> Verdict:
    """Judges one ``[N, N, 3]`` uint8 image against its caption."""
    claims = parse_caption(caption) if isinstance(caption, str) else caption
    text = caption if isinstance(caption, str) else ""
    detected = detect_objects(image)
    wanted = len(claims.objects)
    # Pick the assignment of detected objects to claimed ones that satisfies the most
    # attributes; with the right count this passes iff some assignment passes.
    candidates: list[list[DetectedObject | None]]
    if len(detected) >= wanted:
        candidates = [list(p) for p in itertools.permutations(detected, wanted)]
    else:
        padded: list[DetectedObject | None] = [*detected, *([None] * (wanted - len(detected)))]
        candidates = [list(p) for p in itertools.permutations(padded, wanted)]
    best = max((_checks_for(claims, c) for c in candidates), key=lambda ch: sum(ch.values()))
    checks = {"count": len(detected) == wanted, **best}
    return Verdict(text, all(checks.values()), checks, detected)


@dataclass
class JudgeReport:
    """Accuracy over many images, overall and per attribute."""

    total: int = 0
    passed: int = 0
    stated: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))
    held: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTRIBUTES, 0))
    failures: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)

    def add(self, verdict: Verdict, name: str = "") -> None:
        self.total += 1
        self.passed += verdict.passed
        for attribute, ok in verdict.checks.items():
            self.stated[attribute] += 1
            self.held[attribute] += ok
        if not verdict.passed:
            failed = sorted(a for a, ok in verdict.checks.items() if not ok)
            self.failures.append({"name": name, "caption": verdict.caption, "failed": failed})

    @property
    def accuracy(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def per_attribute(self) -> dict[str, float | None]:
        return {a: (self.held[a] / self.stated[a] if self.stated[a] else None) for a in ATTRIBUTES}

    def to_json(self) -> dict:
        return {
            "images": self.total,
            "passed": self.passed,
            "accuracy": self.accuracy,
            "per_attribute": self.per_attribute(),
            "stated": self.stated,
            "unreadable": self.unreadable,
            "failures": self.failures,
        }

    def summary(self) -> str:
        lines = [f"judged {self.total} images: {self.passed} passed ({100 * self.accuracy:.2f}%)"]
        for attribute, acc in self.per_attribute().items():
            if acc is not None:
                counts = f"{self.held[attribute]}/{self.stated[attribute]}"
                lines.append(f"  {attribute:<9} {100 * acc:6.2f}%  ({counts})")
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} files could not be judged (see --json)")
        return "\n".join(lines)


def pass_rate(images, captions: list[str]) -> float:
    """The share of uint8 images ``[B, 3, N, N]`` (a tensor) that pass against their
    captions: what training evaluations report for Shapes World."""
    pixels = [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image in images]
    verdicts = [judge_image(p, c) for p, c in zip(pixels, captions, strict=False)]
    return sum(v.passed for v in verdicts) / len(verdicts)


def load_rgb(path: Path) -> np.ndarray:
    """Reads an image as uint8 ``[H, W, 3]``, compositing any alpha onto white; a file
    that is not a readable image of bounded size raises ``UnreadableImage``."""
    return np.array(open_rgb(path), dtype=np.uint8)


def judge_directory(directory: Path, content: bool = False) -> JudgeReport:
    """Judges every ``X.png`` against ``X.txt`` in ``directory`` (not recursive); with
    ``content``, only count, colours and shapes (``content_only``)."""
    report = JudgeReport()
    images = sorted(Path(directory).glob("*.png"))
    if not images:
        raise FileNotFoundError(f"no .png images in {directory}")
    for path in images:
        caption_path = path.with_suffix(".txt")
        try:
            caption = caption_path.read_text(encoding="utf-8").strip()
            claims = parse_caption(caption)
            claims = content_only(claims) if content else claims
            image = load_rgb(path)
            if image.shape[0] != image.shape[1]:
                raise ValueError(f"image is not square: {image.shape[1]}x{image.shape[0]}")
        except (OSError, ValueError) as err:
            report.unreadable.append({"name": path.name, "error": str(err)})
            continue
        verdict = judge_image(image, claims)
        verdict.caption = caption
        report.add(verdict, path.name)
    return report
