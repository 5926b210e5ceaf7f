#!/usr/bin/env bash
# Quality versus compute on this machine: the whole demo (BPE, image tokenizer, transformer,
# CLIP, sampling settings, judged samples) with every stage's time budget scaled so that
# training takes M minutes in all, for each M given (default 10 20 40 80).
#   benchmarks/quality_vs_compute.sh OUT [M ...]
# Each point lands in OUT/M/ (results.json, grids, logs); the table in OUT/curve.md.
# Run nothing else meanwhile: the stages run on the clock.
set -euo pipefail
out=${1:?usage: quality_vs_compute.sh OUT [MINUTES ...]}
shift
minutes=("${@:-10 20 40 80}")
[ $# -eq 0 ] && minutes=(10 20 40 80)
dalle=${DALLE:-.venv/bin/dalle}
mkdir -p "$out"
for m in "${minutes[@]}"; do
  [ -f "$out/$m/results.json" ] && continue
  start=$(date +%s)
  "$dalle" demo --training-minutes "$m" --out "$out/$m" > "$out/$m.log" 2>&1
  echo "$m $(( $(date +%s) - start ))" >> "$out/wall_seconds.txt"
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
wall = dict(line.split() for line in (out / "wall_seconds.txt").read_text().split("\n") if line)
rows = ["| training min | wall min | seen kept | zero-shot kept | seen first | zero-shot first "
        "| CLIP zero-shot shape |", "|---|---|---|---|---|---|---|"]
for m in sorted((p.name for p in out.iterdir() if (p / "results.json").exists()), key=float):
    r = json.loads((out / m / "results.json").read_text())
    s, z = r["seen"], r["zeroshot"]
    rows.append(f"| {m} | {int(wall.get(m, 0)) / 60:.1f} | {s['accuracy']:.1%} | {z['accuracy']:.1%} "
                f"| {s.get('accuracy_without_reranking', 0):.1%} "
                f"| {z.get('accuracy_without_reranking', 0):.1%} "
                f"| {r['clip'].get('zero_shot_shape', 0):.1%} |")
(out / "curve.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
