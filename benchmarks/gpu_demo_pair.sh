#!/usr/bin/env bash
# Issue 17 on a lent GPU: `dalle demo --profile gpu` beside the CPU-sized demo run on the
# GPU (`--training-minutes M`), both at once, then the judge on 500 held-out reconstructions
# of the GPU profile's tokenizer. Small files only (logs, metrics, results, grids) come back,
# as OUT/gpu.tar.gz and OUT/cpu.tar.gz.
#   bash benchmarks/gpu_demo_pair.sh OUT [LIMIT_S] [CPU_PROFILE_MINUTES]
set -u
out=${1:?out dir}; limit=${2:-470}; minutes=${3:-6}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 DALLE_DEBUG=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
work=/tmp/pair; mkdir -p "$work"
timeout "$limit" $py -m dalle demo --profile gpu --out "$work/gpu" > "$work/gpu.log" 2>&1 &
timeout "$limit" $py -m dalle demo --training-minutes "$minutes" --out "$work/cpu" \
  > "$work/cpu.log" 2>&1 &
wait
for name in gpu cpu; do echo "== $name"; grep -v "^INFO" "$work/$name.log" | tail -n 25; done
timeout 60 $py benchmarks/tokenizer_shapes_judge.py --tokenizer "$work/gpu/image_tokenizer" \
  --count 500 --out /tmp/fsq-judge --json "$work/gpu/image_tokenizer/judge.json" | tail -n 16
for name in gpu cpu; do cp "$work/$name.log" "$work/$name/"
  (cd "$work/$name" && find . -path ./image_tokens -prune -o -type f -size -3M \
    \( -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.png' -o -name '*.txt' \
       -o -name '*.yaml' \) -print | tar -czf "$out/$name.tar.gz" -T -)
done
ls -la "$out"
