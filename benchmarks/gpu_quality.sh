#!/usr/bin/env bash
# Issue 17 on a lent GPU, quality: `dalle demo --profile gpu` (the image tokenizer beside
# the CLIP, the transformer, sampling settings chosen on validation prompts, best of 32 by
# CLIP, judged on 200 + 200 held-out prompts); beside it on the same GPU, the paper's dVAE
# (logit-Laplace; DVAE_VARIANTS="name overrides" adds runs), judged on 1,000 held-out
# reconstructions per split; and, once the demo's BPE, image tokenizer and CLIP are
# finished, `dalle demo --pipeline unclip --profile gpu` on them (prior and decoder 2 + 5
# minutes on the clock, the transformer's 7), judged on the same prompts, then variations
# of 64 held-out scenes per split from its decoder (content kept), without a caption and
# with the caption the decoder reads from each source. Meant to be
# started detached (setsid), so it outlives one device call: WORK/done appears when it
# has finished, after it packed the small files (logs, metrics, results, grids, judged
# samples) into WORK/quality.tar.gz.
#   bash benchmarks/gpu_quality.sh WORK [DVAE_MINUTES]
# DVAE=0 leaves out the dVAE, UNCLIP=0 the unCLIP demo and its variations. With 15 minutes
# of device time in all (a machine's start included), one call of under 10 minutes is what
# there is: then run the DALL-E demo alone, its training scaled to fit, in the foreground:
#   DVAE=0 UNCLIP=0 DEMO_ARGS="--profile gpu --training-minutes 5.5" DEMO_LIMIT=540 \
#     bash benchmarks/gpu_quality.sh WORK
# A dry run of the script on a CPU, in a minute or two:
#   DEMO_ARGS=--smoke UNCLIP_ARGS=--smoke JUDGE_COUNT=20 VARIATION_COUNT=2 bash benchmarks/gpu_quality.sh WORK 0.1
set -u
work=${1:?work dir}; minutes=${2:-11}; mkdir -p "$work"
export PYTHONUNBUFFERED=1 DALLE_DEBUG=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
dvae() { local name=$1; shift
  $py -m dalle train-vae --config src/dalle/configs/dvae-shapes.yaml --out "$work/dvae-$name" \
    loop.steps=20000 objective.kl_warmup_steps=4000 objective.temperature_steps=14000 \
    loop.max_minutes="$minutes" loop.schedule_clock=time loop.precision=bf16 \
    loop.eval_every=20000 loop.checkpoint_every=2000 data.num_workers=3 eval.samples=256 "$@" \
    > "$work/dvae-$name.log" 2>&1
  echo "dvae-$name: exit $?" >> "$work/status"
  $py benchmarks/tokenizer_shapes_judge.py --tokenizer "$work/dvae-$name" \
    --count "${JUDGE_COUNT:-1000}" --out "$work/judge-$name" --json "$work/dvae-$name/judge.json" \
    > "$work/judge-$name.log" 2>&1
  echo "judge-$name: exit $?" >> "$work/status"; }
unclip() {
  while [ ! -f "$work/demo/clip/.complete" ] || [ ! -f "$work/demo/image_tokenizer/.complete" ]; do
    sleep 5; [ -f "$work/demo-ended" ] && return; done
  timeout "${UNCLIP_LIMIT:-780}" $py -m dalle demo --pipeline unclip --reuse "$work/demo" \
    ${UNCLIP_ARGS:---profile gpu} --out "$work/unclip" > "$work/unclip.log" 2>&1
  echo "unclip: exit $?" >> "$work/status"
  # Variations of held-out scenes from the unCLIP decoder: content kept, best 4 of 32 by CLIP.
  $py benchmarks/unclip_variations_judge.py --decoder "$work/unclip/decoder" \
    --count "${VARIATION_COUNT:-64}" --num 4 --candidates 32 --temperature 0.5 --guidance 2 \
    --out "$work/variations" --json "$work/variations.json" > "$work/variations.log" 2>&1
  echo "variations: exit $?" >> "$work/status"
  # The same, the decoder given the caption it reads from each source as well (ranked by
  # the CLIP and the decoder's likelihood: UnCLIP.variation_scores).
  $py benchmarks/unclip_variations_judge.py --decoder "$work/unclip/decoder" \
    --count "${VARIATION_COUNT:-64}" --num 4 --candidates 32 --temperature 0.5 --guidance 2 \
    --caption describe --out "$work/variations-described" \
    --json "$work/variations-described.json" > "$work/variations-described.log" 2>&1
  echo "variations, caption read: exit $?" >> "$work/status"; }
if [ "${DVAE:-1}" != 0 ]; then
  dvae laplace objective.likelihood=logit_laplace &
  if [ -n "${DVAE_VARIANTS:-}" ]; then dvae $DVAE_VARIANTS & fi
fi
if [ "${UNCLIP:-1}" != 0 ]; then unclip & fi
t0=$SECONDS
timeout "${DEMO_LIMIT:-1000}" $py -m dalle demo ${DEMO_ARGS:---profile gpu} --out "$work/demo" \
  > "$work/demo.log" 2>&1
echo "demo: exit $? in $((SECONDS - t0)) s" >> "$work/status"; touch "$work/demo-ended"
wait
bash "$(dirname "$0")/gpu_pack.sh" "$work" "$work/quality.tar.gz"
touch "$work/done"
