#!/usr/bin/env bash
# dVAE benchmarks on a GPU machine (issue 3): Shapes World and emoji-noto-64 runs side by
# side on one GPU, then the judge on reconstructions of held-out Shapes World samples.
#   bash benchmarks/gpu_dvae.sh OUT_DIR [EMOJI_TAR] [extra overrides for every run...]
set -euo pipefail
out=${1:?out dir}; emoji=${2:-../shared/data/emoji-noto-64/train-000000.tar}; shift 2 || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
python3 -m dalle train-vae --config configs/dvae-shapes.yaml --out "$out/shapes" "$@" > "$out/shapes.log" 2>&1 &
python3 -m dalle train-vae --config configs/dvae-shapes.yaml --out "$out/shapes-kl1" objective.kl_weight=1.0 "$@" > "$out/shapes-kl1.log" 2>&1 &
python3 -m dalle train-vae --config configs/dvae-emoji.yaml --out "$out/emoji" data.source="$emoji" "$@" > "$out/emoji.log" 2>&1 &
wait
for run in shapes shapes-kl1; do
  python3 benchmarks/tokenizer_shapes_judge.py --count "${JUDGE_COUNT:-1000}" --model "$out/$run" --out "/tmp/judge-$run" --json "$out/$run/judge.json" 2>&1 | tee "$out/$run-judge.log"
done
tail -n 3 "$out"/*.log
