#!/bin/bash
cd /work/main && source .venv/bin/activate
O=/work/runs/latent; mkdir -p $O
for pred in sample v_prediction epsilon; do
  dalle train-decoder --config configs/decoder-latent-shapes-demo.yaml --clip outputs/demo/clip --out $O/$pred \
    image_tokenizer=outputs/demo/image_tokenizer model.prediction=$pred loop.max_minutes=5 loop.steps=650 > $O/$pred.log 2>&1
  python benchmarks/unclip_decode_settings.py $O/$pred > $O/$pred-sweep.log 2>&1
  echo "$pred done $(date +%T)"
done
