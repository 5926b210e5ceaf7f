#!/usr/bin/env bash
# One image-tokenizer variant after another, each trained under its config's clock and
# judged on 1,000 held-out Shapes World scenes per split; nothing else should run beside
# it (the runs are clocked).
#
#   bash benchmarks/tokenizer_variants.sh OUT CONFIG NAME "KEY=VALUE ..." [NAME "..."]...
#
# Writes OUT/NAME-{metrics.jsonl,train_config.yaml,judge.json,train.log} per variant;
# the run folders (weights, checkpoints) stay under OUT/runs/.
set -euo pipefail
out=$1 config=$2
shift 2
mkdir -p "$out/runs"
while (($# >= 2)); do
  name=$1 overrides=$2
  shift 2
  run=$out/runs/$name
  # shellcheck disable=SC2086  # the overrides are separate words on purpose
  dalle train-image-tokenizer --config "$config" --out "$run" $overrides >"$out/$name-train.log" 2>&1
  python benchmarks/tokenizer_shapes_judge.py --tokenizer "$run" --count 1000 \
    --out "$run/judged" --json "$out/$name-judge.json" >>"$out/$name-train.log" 2>&1
  cp "$run/metrics.jsonl" "$out/$name-metrics.jsonl"
  cp "$run/train_config.yaml" "$out/$name-train_config.yaml"
  echo "$name done $(date -u +%H:%M:%S)"
done
