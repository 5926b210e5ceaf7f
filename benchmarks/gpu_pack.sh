#!/usr/bin/env bash
# The small files of a GPU run folder (logs, metrics, results, grids, judged samples) into
# one archive, leaving weights, checkpoints and token shards behind: what a device call
# can bring back.   bash benchmarks/gpu_pack.sh WORK ARCHIVE
set -u
work=${1:?run folder}; archive=$(realpath -m "${2:?archive}")
# (judge-*/ folders hold a thousand reconstructions each; their judge-*.log files stay.)
cd "$work" && find . \( -path ./demo/image_tokens -o -type d -path './judge-*' \) -prune -o -type f \
  -size -3M \( -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.png' \
  -o -name '*.txt' -o -name '*.yaml' \) -print | tar -czf "$archive" -T -
