#!/usr/bin/env bash
# DALL-E 2 (unCLIP) on real data, emoji-noto-64 (3,414 emoji, 64x64; a tenth held out by a
# hash of each key and never trained on), on this machine in about 30 minutes:
#   caption BPE -> FSQ image tokenizer (16x16) -> CLIP -> diffusion prior -> latent decoder
#   -> 64 held-out captions drawn 4 times each, the CLIP keeping one -> CLIP score and
#   Frechet CLIP distance against the real held-out emoji, beside two references measured
#   the same way: the real held-out emoji with their own captions, and with the captions
#   shuffled (what no relation between image and caption scores).
#   benchmarks/emoji_unclip.sh OUT
# Every stage is a `dalle` command; re-running resumes. Run nothing else meanwhile: the
# stages train on the clock (configs/{tokenizer,fsq,clip,prior,decoder-latent}-emoji.yaml).
set -euo pipefail
out=${1:?usage: emoji_unclip.sh OUT}
source "$(dirname "$0")/emoji_stages.sh"  # settings, the caption BPE, the image tokenizer
"$dalle" train-clip --config configs/clip-emoji.yaml --data "$data" --out "$out/clip" \
  --tokenizer "$out/tokenizer"
stamp clip
"$dalle" train-prior --config configs/prior-emoji.yaml --data "$data" --clip "$out/clip" \
  --out "$out/prior"
stamp prior
"$dalle" train-decoder --config configs/decoder-latent-emoji.yaml --data "$data" \
  --out "$out/decoder" --clip "$out/clip" --image-tokenizer "$out/image_tokenizer"
stamp decoder
# The references, and the prompts: the first 64 held-out emoji and their captions.
"$python" - "$data" "$out" <<'PY'
import random, sys
from pathlib import Path
from dalle.data.datasets import DataConfig, load_samples
from dalle.sampling.generate import write_images
data, out = sys.argv[1], Path(sys.argv[2])
batch = load_samples(DataConfig(source=data, image_size=64, subset="holdout"), 64)
images, captions = batch.images[:64], list(batch.captions[:64])
write_images(images, captions, out / "real")
shuffled = captions[:]
random.Random(0).shuffle(shuffled)
write_images(images, shuffled, out / "shuffled")
(out / "prompts.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
PY
[ -f "$out/samples/0063.png" ] ||
  "$dalle" unclip --prompts "$out/prompts.txt" --prior "$out/prior" --decoder "$out/decoder" \
    --num 4 --keep 1 --seed 0 --out-dir "$out/samples" --out "$out/samples_grid.png"
stamp samples
for name in samples real shuffled; do
  "$dalle" clip-metrics "$out/$name" --clip "$out/clip" --real "$data" --real-subset holdout \
    --count 342 --json > "$out/clip_metrics_$name.json"
done
stamp metrics
cat "$out"/clip_metrics_*.json
echo "all stages: $(( ($(date +%s) - start) / 60 )) min"
