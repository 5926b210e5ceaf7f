#!/usr/bin/env bash
# train.sh NAME TOKENS_PATTERN SEED: the demo's transformer config, 4,600 updates on the
# step clock (no time budget), one thread.
set -u
name=$1; tokens=$2; seed=$3
export PYTHONPATH=/work/main/src
/work/main/.venv/bin/dalle train --config base/dalle/train_config.yaml --out runs/$name \
  "data.source=$tokens" loop.schedule_clock=steps loop.max_minutes=0 loop.threads=1 \
  loop.seed=$seed data.seed=$seed image_tokenizer=base/image_tokenizer tokenizer=base/tokenizer \
  "${@:4}" > logs/$name.log 2>&1
echo "$name exit $?" >> logs/status
