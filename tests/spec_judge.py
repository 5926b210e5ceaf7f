"""A second Shapes World judge, written from docs/shapes-world.md (the spec) alone.

It imports nothing from ``dalle``: the constants are re-typed from the spec, the shapes
are tested analytically at pixel centres (no polygon rasteriser), and where the spec
leaves room it reads it the most literal way (a star's circumscribed circle fills the box).
If the project's renderer drifted from the spec, this judge would stop agreeing with it.
"""

from __future__ import annotations

import math
import re

import numpy as np
from scipy import ndimage

PALETTE = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (235, 205, 30),
    "green": (40, 160, 60), "blue": (40, 90, 220), "purple": (140, 60, 190),
    "pink": (240, 120, 180),
}  # fmt: skip
SHAPE_NAMES = ["circle", "square", "triangle", "diamond", "star", "cross"]
CELLS = [
    ["top left", "top", "top right"],
    ["left", "center", "right"],
    ["bottom left", "bottom", "bottom right"],
]


def _star_polygon(cx: float, cy: float, radius: float) -> np.ndarray:
    pts = []
    for k in range(10):
        r = radius if k % 2 == 0 else 0.45 * radius
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return np.array(pts)


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    inside = np.zeros(x.shape, dtype=bool)
    j = len(poly) - 1
    for i in range(len(poly)):
        xi, yi = poly[i]
        xj, yj = poly[j]
        crosses = (yi > y) != (yj > y)
        x_at = (xj - xi) * (y - yi) / ((yj - yi) if yj != yi else 1e-12) + xi
        inside ^= crosses & (x < x_at)
        j = i
    return inside


def shape_mask(name: str, cx: float, cy: float, side: float, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    dx, dy, h = xs - cx, ys - cy, side / 2
    in_box = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if name == "circle":
        return dx**2 + dy**2 <= h**2
    if name == "square":
        return in_box
    if name == "triangle":
        return in_box & (np.abs(dx) <= (dy + h) / 2)
    if name == "diamond":
        return np.abs(dx) + np.abs(dy) <= h
    if name == "cross":
        return in_box & ((np.abs(dx) <= side / 6) | (np.abs(dy) <= side / 6))
    if name == "star":
        return _inside_polygon(xs, ys, _star_polygon(cx, cy, h))
    raise ValueError(name)


def find_objects(image: np.ndarray) -> list[dict]:
    n = image.shape[0]
    fg = (255 - image.astype(int)).max(axis=2) > 60
    labels, count = ndimage.label(fg, structure=np.ones((3, 3)))
    found = []
    for k in range(1, count + 1):
        comp = labels == k
        if comp.sum() < (0.05 * n) ** 2:
            continue
        rows, cols = np.nonzero(comp)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        cx, cy = (c0 + c1) / 2, (r0 + r1) / 2
        median = np.median(image[comp].astype(float), axis=0)
        color = min(PALETTE, key=lambda c: float(((np.array(PALETTE[c]) - median) ** 2).sum()))
        side = max(c1 - c0, r1 - r0)
        ious = {}
        for name in SHAPE_NAMES:
            m = shape_mask(name, cx, cy, side, n, n)
            ious[name] = (m & comp).sum() / (m | comp).sum()
        found.append({
            "color": color, "shape": max(ious, key=ious.get),
            "size": "small" if side < 0.36 * n else "large",
            "position": CELLS[min(int(cy * 3 // n), 2)][min(int(cx * 3 // n), 2)],
            "cx": cx, "cy": cy,
        })  # fmt: skip
    return found


_OBJ = r"a (small |large )?(red|orange|yellow|green|blue|purple|pink) (\w+)"
_POS = r"(top left|top right|bottom left|bottom right|top|bottom|left|right|center)"


def parse(caption: str) -> tuple[list[dict], str | None]:
    for pattern, pos_group in (
        (rf"^{_OBJ} in the {_POS}$", 4), (rf"^{_OBJ}$", None),
        (rf"^there is {_OBJ} in the {_POS}$", 4), (rf"^{_POS}: {_OBJ}$", 1),
    ):  # fmt: skip
        m = re.match(pattern, caption)
        if m:
            g = m.groups()
            off = 1 if pos_group == 1 else 0
            obj = {"size": (g[off] or "").strip() or None, "color": g[off + 1], "shape": g[off + 2]}
            obj["position"] = g[pos_group - 1] if pos_group else None
            return [obj], None
    m = re.match(rf"^{_OBJ} (to the left of|to the right of|above|below) {_OBJ}$", caption)
    assert m, caption
    g = m.groups()
    objs = [
        {
            "size": (g[i] or "").strip() or None,
            "color": g[i + 1],
            "shape": g[i + 2],
            "position": None,
        }
        for i in (0, 4)
    ]
    return objs, g[3]


def passes(image: np.ndarray, caption: str) -> bool:
    claims, relation = parse(caption)
    found = find_objects(image)
    if len(found) != len(claims):
        return False
    orders = [found] if len(found) == 1 else [found, found[::-1]]
    for order in orders:
        ok = all(
            all(c[a] is None or c[a] == f[a] for a in ("size", "color", "shape", "position"))
            for c, f in zip(claims, order, strict=True)
        )
        if relation:
            a, b = order
            ok &= {"to the left of": a["cx"] < b["cx"], "to the right of": a["cx"] > b["cx"],
                   "above": a["cy"] < b["cy"], "below": a["cy"] > b["cy"]}[relation]  # fmt: skip
        if ok:
            return True
    return False
