#!/usr/bin/env bash
# The transformer's training speed on images encoded on the fly against the same model on
# pre-tokenized shards (`dalle tokenize-data`), one run after the other on this machine.
#   bash benchmarks/pretokenized_speed.sh IMAGE_TOKENIZER CAPTION_TOKENIZER OUT [STEPS]
# Prints images/s of each (the mean over the logged windows after the first).
set -euo pipefail
tokenizer=$1 bpe=$2 out=$3 steps=${4:-150}
mkdir -p "$out"
dalle tokenize-data --tokenizer "$tokenizer" --data shapes --count ${COUNT:-20000} --out "$out/shards" \
  --shard-size 5000 | tail -2
common=(--config configs/dalle-shapes-demo.yaml --image-tokenizer "$tokenizer" --tokenizer "$bpe"
        loop.steps="$steps" loop.log_every=25 loop.eval_every=100000 loop.checkpoint_every=100000
        loop.max_minutes=0 eval.samples=64 eval.grid=1)
dalle train "${common[@]}" --data shapes --out "$out/images" > "$out/images.log" 2>&1
dalle train "${common[@]}" --data "$out/shards/tokens-{000000..$(printf %06d $(( $(ls $out/shards/tokens-*.tar | wc -l) - 1 )))}.tar" --out "$out/tokens" \
  > "$out/tokens.log" 2>&1
for run in images tokens; do
  python - "$out/$run/metrics.jsonl" "$run" <<'PY'
import json, sys
rates = [r["images_per_s"] for r in map(json.loads, open(sys.argv[1])) if "images_per_s" in r][1:]
print(f"{sys.argv[2]}: {sum(rates) / len(rates):.1f} images/s over {len(rates)} windows")
PY
done
