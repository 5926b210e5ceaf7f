#!/usr/bin/env bash
# What lets the demo's dVAE learn Shapes World in 7 minutes on 2 CPU cores? The demo's
# config (configs/dvae-shapes-cpu.yaml) against itself with one change each, every
# run judged on 500 held-out reconstructions per split. One run at a time, 2 threads.
#   PATH=.venv/bin:$PATH bash benchmarks/cpu_dvae_demo_ablation.sh OUT_DIR [NAME...]
# With NAMEs, only those variants run ("demo" is the same run as `make demo`'s stage 2).
set -uo pipefail
out=${1:?out dir}
mkdir -p "$out"
variants=(
  "demo"
  "logit-laplace objective.likelihood=logit_laplace"
  "no-init init_from_data=false"
)
shift
only=" $* "
for v in "${variants[@]}"; do
  read -r name args <<< "$v"
  if [[ $# -gt 0 && "$only" != *" $name "* ]]; then continue; fi
  # shellcheck disable=SC2086
  dalle train-vae --config configs/dvae-shapes-cpu.yaml --out "$out/$name" loop.max_minutes=0 \
    $args > "$out/$name.log" 2>&1
  python benchmarks/tokenizer_shapes_judge.py --model "$out/$name" --count 500 \
    --out "/tmp/judge-$name" --json "$out/$name/judge.json" > "$out/$name-judge.log" 2>&1
  echo "== $name: $(tail -n 2 "$out/$name.log" | head -n 1)"
  grep judged "$out/$name-judge.log"
done
