#!/usr/bin/env bash
# Issue 17 on a lent GPU, part 1: correctness of the CUDA-only paths, the smoke demo on the
# GPU, a one-rank torchrun (NCCL, FSDP2, sharded checkpoint and resume), then training MFU
# of the ~300M transformer for three attention variants and sampling speed. Each step has
# its own time limit, so one slow step cannot lose the rest; results go to OUT.
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
TAIL=5 step 60 checks $py benchmarks/gpu_checks.py
step 100 demo-smoke $py -m dalle demo --smoke --out /tmp/demo-smoke
# A one-rank torchrun: NCCL process group, FSDP2 over one rank, sharded checkpoint; then
# the same run resumed from that checkpoint to twice the updates.
nccl="torchrun --standalone --nproc-per-node 1 -m dalle train-image-tokenizer \
  --config src/dalle/configs/fsq-shapes-demo.yaml --out /tmp/nccl loop.checkpoint_every=100 \
  loop.eval_every=400 loop.log_every=100 eval.samples=64 data.num_workers=2 \
  loop.schedule_clock=steps loop.max_minutes=30"
step 90 torchrun-nccl $nccl loop.steps=200
TAIL=3 step 90 torchrun-nccl-resume $nccl loop.steps=400
cp /tmp/nccl/metrics.jsonl "$out/torchrun-nccl-metrics.jsonl" 2>/dev/null
TAIL=3 step 60 torchrun-fsdp-scale torchrun --standalone --nproc-per-node 1 benchmarks/gpu_scale.py \
  --layers 4 --variants sdpa --sampling "" --out "$out/scale.jsonl"
for variant in flex sdpa causal; do
  TAIL=2 step 130 "train-$variant" $py benchmarks/gpu_scale.py --variants $variant --sampling "" \
    --out "$out/scale.jsonl"
done
TAIL=5 step 120 sampling $py benchmarks/gpu_scale.py --variants "" --sampling 1e,1g,16g,64g \
  --out "$out/scale.jsonl"
