#!/bin/bash
# run.sh NAME SRC overrides... : one demo CLIP stage, 3.2 min, judged by its own eval
name=$1; src=$2; shift 2
out=/tmp/clip/runs/$name
rm -rf $out; mkdir -p /tmp/clip/runs
cd /work/main
PYTHONPATH=$src .venv/bin/python -m dalle train-clip --config ${CFG:-configs/clip-shapes-demo.yaml} --tokenizer outputs/demo/tokenizer --out $out data.image_size=64 "$@" > /tmp/clip/runs/$name.log 2>&1
echo "$name $(grep '"eval"' $out/metrics.jsonl | tail -1)" >> /tmp/clip/summary.txt
