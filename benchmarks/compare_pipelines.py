"""Two text-to-image runs judged side by side on the same prompts: overall and per
attribute, with one-object and two-object prompts (attribute binding) apart.

Each run is a folder of ``NNNN.png`` + ``NNNN.txt`` per split, as `dalle demo` writes
(``seen/``, ``zeroshot/``); prompts are matched by their caption files.

    python benchmarks/compare_pipelines.py outputs/demo outputs/demo-unclip --names DALL-E unCLIP
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle.evaluation.shapes_judge import (
    ATTRIBUTES,
    JudgeReport,
    judge_image,
    load_rgb,
    parse_caption,
)


def judge_by_objects(folder: Path) -> dict[str, JudgeReport]:
    """Reports for every image, for one-object prompts and for two-object prompts."""
    reports = {"all": JudgeReport(), "one object": JudgeReport(), "two objects": JudgeReport()}
    for image in sorted(folder.glob("*.png")):
        caption = image.with_suffix(".txt").read_text(encoding="utf-8").strip()
        verdict = judge_image(load_rgb(image), caption)
        kind = "one object" if len(parse_caption(caption).objects) == 1 else "two objects"
        reports["all"].add(verdict, image.name)
        reports[kind].add(verdict, image.name)
    return reports


def cell(report: JudgeReport, attribute: str | None) -> str:
    if attribute is None:
        return f"{report.accuracy:.1%} ({report.passed}/{report.total})"
    rate = report.per_attribute()[attribute]
    return "" if rate is None else f"{rate:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs=2)
    parser.add_argument("--names", nargs=2, default=None)
    parser.add_argument("--splits", nargs="+", default=["seen", "zeroshot"])
    args = parser.parse_args()
    names = args.names or [run.name for run in args.runs]
    for split in args.splits:
        for run in args.runs:
            captions = sorted(p.read_text() for p in (run / split).glob("*.txt"))
            first = sorted(p.read_text() for p in (args.runs[0] / split).glob("*.txt"))
            if captions != first:
                raise SystemExit(f"{run / split} and {args.runs[0] / split} hold different prompts")
        reports = [judge_by_objects(run / split) for run in args.runs]
        print(f"\n**{split}**\n")
        print(f"| prompts | judged | {names[0]} | {names[1]} |")
        print("| --- | --- | --- | --- |")
        for kind in ("all", "one object", "two objects"):
            for attribute in (None, *ATTRIBUTES):
                label = "pass" if attribute is None else attribute
                values = [cell(r[kind], attribute) for r in reports]
                if any(values):
                    print(f"| {kind} | {label} | {values[0]} | {values[1]} |")


if __name__ == "__main__":
    main()
