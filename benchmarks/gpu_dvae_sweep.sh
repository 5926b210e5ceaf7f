#!/usr/bin/env bash
# Shapes World dVAE variants trained side by side on one GPU, each judged on 1,000
# held-out reconstructions. One line per variant below: NAME followed by overrides.
#   bash benchmarks/gpu_dvae_sweep.sh OUT_DIR [overrides for every variant...]
set -uo pipefail
out=${1:?out dir}; shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
common=(loop.steps=6000 objective.kl_warmup_steps=1000 objective.temperature_steps=5000
        loop.eval_every=1000 eval.samples=512 data.num_workers=2 "$@")
# Default variants (override with VARIANTS_FILE, one "NAME overrides..." a line).
variants=(
  "init optim.lr=3e-4 optim.grad_clip=1.0"
  "noinit optim.lr=3e-4 optim.grad_clip=1.0 init_from_data=false"
  "init-lr1e-3 optim.lr=1e-3 optim.grad_clip=1.0"
  "init-st optim.lr=3e-4 optim.grad_clip=1.0 objective.straight_through=true"
  "init-ema optim.lr=3e-4 optim.grad_clip=1.0 optim.ema_decay=0.999"
  "init-kl1.65 optim.lr=3e-4 optim.grad_clip=1.0 objective.kl_weight=1.65"
)
if [[ -n "${VARIANTS_FILE:-}" ]]; then mapfile -t variants < "$VARIANTS_FILE"; fi
for v in "${variants[@]}"; do
  read -r name args <<< "$v"
  # shellcheck disable=SC2086
  python3 -m dalle train-vae --config configs/dvae-shapes.yaml --out "$out/$name" "${common[@]}" $args \
    > "$out/$name.log" 2>&1 &
done
wait
for v in "${variants[@]}"; do
  read -r name _ <<< "$v"
  python3 benchmarks/tokenizer_shapes_judge.py --count "${JUDGE_COUNT:-1000}" --model "$out/$name" \
    --out "/tmp/judge-$name" --json "$out/$name/judge.json" > "$out/$name/judge.log" 2>&1
  echo "== $name: $(tail -n 2 "$out/$name.log" | head -n 1)"
  python3 -c "import json; d=json.load(open('$out/$name/judge.json')); print({k: round(v['accuracy'], 4) for k, v in d.items()})"
done
