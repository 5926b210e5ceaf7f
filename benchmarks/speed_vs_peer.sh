#!/usr/bin/env bash
# Issue 4's speed comparison, both sides in one run on the same machine and thread count:
# this project (paper sparse schedule, and all-full attention) against dalle-pytorch 1.6.6
# (full, and its sparse mix). The peer's venv comes from shared/bench/peer/setup.sh.
#   bash benchmarks/speed_vs_peer.sh PEER_VENV [THREADS]
set -euo pipefail
peer=${1:?peer venv}; threads=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
peer_script=${PEER_SCRIPT:-$here/../shared/bench/peer/time_dalle_pytorch.py}
for precision in fp32 bf16; do
  for attn in paper blocked full; do
    "$here/.venv/bin/python" "$here/benchmarks/speed_vs_peer.py" "$threads" "$attn" "$precision"
  done
done
for attn in full sparse; do "$peer/bin/python" "$peer_script" "$threads" "$attn" 2>/dev/null | tail -n 1; done
