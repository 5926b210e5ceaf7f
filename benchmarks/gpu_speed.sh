#!/usr/bin/env bash
# Issue 17 on a lent GPU, speed: attention alone per layer kind and back-end, training MFU
# of the ~300M transformer for five attention variants, and sampling speed (the CUDA-graph
# step, eager and compiled). Each step has its own time limit, so one slow step cannot lose
# the rest; results go to OUT. (The first GPU session's version also ran the correctness
# checks, the smoke demo and a one-rank NCCL torchrun: `python benchmarks/gpu_checks.py`.)
#   bash benchmarks/gpu_speed.sh OUT
set -u
out=${1:?out dir}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 DALLE_DEBUG=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
step() { local limit=$1 name=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0)) s"; tail -n "${TAIL:-4}" "$out/$name.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
$py -c "import torch, dalle; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
TAIL=22 step 150 attention $py benchmarks/gpu_attention.py --out "$out/attention.jsonl"
for variant in ${VARIANTS:-flex flex64 sdpa blocked causal}; do
  TAIL=2 step 100 "train-$variant" $py benchmarks/gpu_scale.py --variants $variant --sampling "" \
    --out "$out/scale.jsonl"
done
TAIL=6 step "${SAMPLING_LIMIT:-220}" sampling $py benchmarks/gpu_scale.py --variants "" \
  --sampling "${SAMPLING:-1g,1c,64g,64c}" --out "$out/scale.jsonl"
