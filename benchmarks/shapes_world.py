"""Shapes World: judge accuracy on fresh renders, agreement with the independent judge
(tests/spec_judge.py), with and without antialiasing, and render/judge speed.

    .venv/bin/python benchmarks/shapes_world.py [--count 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import spec_judge
from dalle.data.shapes_world import render_scene, sample_scene
from dalle.evaluation.shapes_judge import judge_image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for canvas in (32, 64, 128, 256):
        for supersample in (1, 4):
            for split in ("train", "zeroshot"):
                count = args.count if canvas <= 128 else args.count // 4
                ours = independent = 0
                render_s = judge_s = 0.0
                for index in range(count):
                    scene = sample_scene(args.seed, index, canvas, split)
                    t0 = time.perf_counter()
                    image = render_scene(scene, supersample=supersample)
                    t1 = time.perf_counter()
                    ours += judge_image(image, scene.caption).passed
                    t2 = time.perf_counter()
                    independent += spec_judge.passes(image, scene.caption)
                    render_s += t1 - t0
                    judge_s += t2 - t1
                row = {
                    "canvas": canvas, "supersample": supersample, "split": split, "count": count,
                    "judge_pass": ours / count, "independent_pass": independent / count,
                    "render_ms": 1000 * render_s / count, "judge_ms": 1000 * judge_s / count,
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
