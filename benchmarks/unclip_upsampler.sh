#!/usr/bin/env bash
# DALL-E 2 with a 32-pixel decoder (DMIN minutes) and a 32 -> 64 upsampler (UMIN minutes)
# on the unCLIP demo's CLIP and prior (run `dalle demo --pipeline unclip` first), judged
# like the demo on its 64 + 64 prompts, best of 4 by the CLIP.
#   bash benchmarks/unclip_upsampler.sh OUT [DMIN] [UMIN]
set -u
out=${1:?out dir}; dmin=${2:-8}; umin=${3:-4}
mkdir -p $out
.venv/bin/dalle train-decoder --config configs/decoder-shapes-demo.yaml --clip outputs/demo-unclip/clip \
  --out $out/decoder image_size=32 loop.max_minutes=$dmin loop.steps=2000 loop.eval_every=2000 \
  loop.checkpoint_every=500 > $out/decoder.log 2>&1
.venv/bin/dalle train-upsampler --config configs/upsampler-shapes.yaml --out $out/upsampler \
  loop.max_minutes=$umin loop.eval_every=3000 > $out/upsampler.log 2>&1
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
from dalle.demo import DemoConfig
from dalle.demo_unclip import UnCLIPDemoConfig, _sample_and_judge
from dalle.sampling.unclip import UnCLIP
out = Path(sys.argv[1])
c = UnCLIPDemoConfig(DemoConfig())
for name, up in (("with-upsampler", out / "upsampler"),):
    pipe = UnCLIP.from_pretrained(out / "decoder", "outputs/demo-unclip/prior", precision="bf16", upsampler=up)
    results = {split: _sample_and_judge(c, pipe, out / name / folder, split)
               for folder, split in (("seen", "train"), ("zeroshot", "zeroshot"))}
    (out / name / "results.json").write_text(json.dumps(results, indent=2))
PY
