#!/usr/bin/env bash
# The whole DALL-E pipeline on real data, emoji-noto-64 (3,414 emoji, 64x64, a tenth held
# out by a hash of each key and never trained on), on this machine in at most an hour:
#   caption BPE -> FSQ image tokenizer (16x16) -> token shards -> transformer -> CLIP
#   -> bits per dimension on the held-out tenth -> samples for held-out captions.
#   benchmarks/emoji_pipeline.sh OUT
# Every stage is a `dalle` command; re-running resumes. Run nothing else meanwhile: the
# stages train on the clock (configs/{tokenizer,fsq,dalle,clip}-emoji.yaml).
set -euo pipefail
out=${1:?usage: emoji_pipeline.sh OUT}
source "$(dirname "$0")/emoji_stages.sh"  # settings, the caption BPE, the image tokenizer
[ -f "$out/image_tokens/tokens.json" ] ||
  "$dalle" tokenize-data --tokenizer "$out/image_tokenizer" --data "$data" --out "$out/image_tokens"
stamp image_tokens
"$dalle" train --config configs/dalle-emoji.yaml --out "$out/dalle" \
  --data "$out/image_tokens/tokens-000000.tar" \
  --image-tokenizer "$out/image_tokenizer" --tokenizer "$out/tokenizer"
stamp transformer
"$dalle" train-clip --config configs/clip-emoji.yaml --data "$data" --out "$out/clip" \
  --tokenizer "$out/tokenizer"
stamp clip
"$dalle" score --model "$out/dalle" --data "$data" --subset holdout --json > "$out/holdout_bits.json"
"$dalle" score --model "$out/dalle" --data "$data" --subset train --count 342 --json \
  > "$out/train_bits.json"
stamp score
"$python" benchmarks/emoji_samples.py "$out" "$data"
stamp samples
cat "$out/holdout_bits.json"
echo "all stages: $(( ($(date +%s) - start) / 60 )) min"
