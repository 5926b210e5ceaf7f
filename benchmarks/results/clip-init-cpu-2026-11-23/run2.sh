#!/bin/bash
# run2.sh NAME PYSCRIPT overrides...
name=$1; script=$2; shift 2
out=/tmp/clip/runs/$name
rm -rf $out; mkdir -p /tmp/clip/runs
cd /work/main
.venv/bin/python $script train-clip --config configs/clip-shapes-demo.yaml --tokenizer outputs/demo/tokenizer --out $out data.image_size=64 "$@" > /tmp/clip/runs/$name.log 2>&1
echo "$name $(grep '"eval"' $out/metrics.jsonl | tail -1)" >> /tmp/clip/summary.txt
