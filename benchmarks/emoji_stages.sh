# The first stages of every emoji-noto-64 pipeline (benchmarks/emoji_*.sh source this
# after setting `out`): the settings, a stage clock, the caption BPE and the FSQ image
# tokenizer. Every stage is a `dalle` command; re-running resumes.
set -euo pipefail
data=${EMOJI:-../shared/data/emoji-noto-64/train-000000.tar}
dalle=${DALLE:-.venv/bin/dalle}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - start ))" >> "$out/stage_seconds.txt"; }

[ -f "$out/tokenizer/tokenizer.json" ] ||
  "$dalle" tokenizer train --config configs/tokenizer-emoji.yaml --data "$data" --out "$out/tokenizer"
stamp tokenizer
"$dalle" train-image-tokenizer --config configs/fsq-emoji.yaml --data "$data" --out "$out/image_tokenizer"
stamp image_tokenizer
