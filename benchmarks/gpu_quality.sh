#!/usr/bin/env bash
# Issue 17 on a lent GPU, part 2: `dalle demo --profile gpu` (tokenizer, BPE, transformer,
# CLIP, sampling with re-ranking, judged on 200 + 200 held-out prompts), with three
# repaired-dVAE runs of the paper's objective beside it on the same GPU (logit-Laplace,
# logit-Laplace with a floor of 0.2 under its scale, and Gaussian likelihood), each
# judged on 1,000 held-out reconstructions per split. Packs
# the small files (logs, metrics, results, grids) into OUT/quality.tar.gz.
#   bash benchmarks/gpu_quality.sh OUT [DVAE_MINUTES]
set -u
out=${1:?out dir}; minutes=${2:-6}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 DALLE_DEBUG=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
work=/tmp/quality; mkdir -p "$work"
dvae() { local name=$1; shift
  $py -m dalle train-vae --config src/dalle/configs/dvae-shapes.yaml --out "$work/dvae-$name" \
    loop.steps=5000 objective.kl_warmup_steps=1000 objective.temperature_steps=3500 \
    loop.max_minutes="$minutes" loop.precision=bf16 data.num_workers=2 eval.samples=256 "$@" \
    > "$work/dvae-$name.log" 2>&1
  $py benchmarks/tokenizer_shapes_judge.py --tokenizer "$work/dvae-$name" --count "${JUDGE_COUNT:-1000}" \
    --out "$work/judge-$name" --json "$work/dvae-$name/judge.json" > "$work/judge-$name.log" 2>&1; }
dvae laplace objective.likelihood=logit_laplace &
dvae laplace-floor objective.likelihood=logit_laplace objective.min_scale=0.2 &
dvae gaussian objective.likelihood=gaussian &
t0=$SECONDS
timeout "${DEMO_LIMIT:-530}" $py -m dalle demo --profile gpu --out "$work/demo" > "$work/demo.log" 2>&1
echo "demo: exit $? in $((SECONDS - t0)) s"; tail -n 30 "$work/demo.log"
wait
for name in laplace laplace-floor gaussian; do echo "== dvae-$name"; tail -n 3 "$work/dvae-$name.log"
  tail -n 12 "$work/judge-$name.log"; done
# Small files only (logs, metrics, judge results, grids): checkpoints and weights stay.
cd "$work" && find . -path ./demo/image_tokens -prune -o -path './judge-*' -prune -o -type f \
  -size -3M \( -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.png' \
  -o -name '*.txt' -o -name '*.yaml' \) -print | tar -czf "$out/quality.tar.gz" -T - && ls -la "$out"
