#!/usr/bin/env bash
# Does the KL weight set how many codes a Shapes World dVAE uses? A CPU-sized proxy of the
# 64x64 -> 16x16 setting: 32x32 images -> 8x8 tokens (the same 4x4-pixel patches), width
# 32, 2,000 updates, one thread per run, two runs at a time.
#   bash benchmarks/cpu_dvae_kl_sweep.sh OUT_DIR
set -uo pipefail
out=${1:?out dir}
mkdir -p "$out"
common=(--preset dvae-small model.hidden_width=32 model.decoder_input_width=32 data.image_size=32
        data.batch_size=32 loop.steps=2000 loop.eval_every=500 loop.log_every=100 loop.threads=1
        objective.kl_warmup_steps=300 objective.temperature_steps=1500 optim.lr=1e-3
        optim.warmup_steps=100 optim.final_lr=1e-5 eval.samples=500)
run() {
  dalle train-vae --out "$out/kl$1" "${common[@]}" objective.kl_weight="$1" > "$out/kl$1.log" 2>&1
  python benchmarks/tokenizer_shapes_judge.py --model "$out/kl$1" --size 32 --count 500 \
    --out "/tmp/judge-kl$1" --json "$out/kl$1/judge.json" > "$out/kl$1-judge.log" 2>&1
}
run 6.6 & run 0.1 & wait
run 1.0 & run 0.0 & wait
for kl in 6.6 1.0 0.1 0.0; do
  echo "beta $kl: $(tail -n 2 "$out/kl$kl.log" | head -n 1)"
  grep judged "$out/kl$kl-judge.log"
done
