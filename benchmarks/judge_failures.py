"""Every image of a judged folder (``NNNN.png`` + ``NNNN.txt``) that fails the Shapes
World judge: its caption, what the judge found in it (colour and shape of each object)
and which stated attributes do not hold, then a count of failures per attribute.

    python benchmarks/judge_failures.py FOLDER
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from dalle.evaluation.shapes_judge import judge_image, load_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    failed: Counter[str] = Counter()
    failures = 0
    images = sorted(args.folder.glob("*.png"))
    for png in images:
        caption = png.with_suffix(".txt").read_text().strip()
        verdict = judge_image(load_rgb(png), caption)
        if verdict.passed:
            continue
        failures += 1
        wrong = [name for name, holds in verdict.checks.items() if not holds]
        failed.update(wrong)
        found = ", ".join(f"{o.color} {o.shape}" for o in verdict.detected) or "nothing"
        print(f"{png.name}  {caption}  | found: {found}  | wrong: {', '.join(wrong)}")
    print(
        f"{failures} of {len(images)} images fail; attributes that do not hold: "
        f"{dict(failed.most_common())}"
    )


if __name__ == "__main__":
    main()
