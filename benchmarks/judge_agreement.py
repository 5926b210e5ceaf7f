"""Do the project's judge and the independent one (tests/spec_judge.py, written from the
spec alone) agree on generated images? Reads folders of ``NNNN.png`` + ``NNNN.txt``.

    .venv/bin/python benchmarks/judge_agreement.py outputs/demo/seen outputs/demo/zeroshot
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import spec_judge
from dalle.evaluation.shapes_judge import judge_image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args()
    for folder in args.folders:
        ours = theirs = agree = total = 0
        for png in sorted(folder.glob("*.png")):
            image = np.asarray(Image.open(png).convert("RGB"))
            caption = png.with_suffix(".txt").read_text(encoding="utf-8").strip()
            a = judge_image(image, caption).passed
            b = spec_judge.passes(image, caption)
            ours, theirs, agree, total = ours + a, theirs + b, agree + (a == b), total + 1
        print(json.dumps({"folder": str(folder), "images": total, "ours": ours / total,
                          "independent": theirs / total, "agreement": agree / total}))  # fmt: skip


if __name__ == "__main__":
    main()
