#!/usr/bin/env bash
# Fuzzes `dalle serve`'s OpenAPI schema with schemathesis (generated and mutated requests
# against every route) and fails on any 5xx. Installs schemathesis into the venv when
# missing (it is a benchmark tool, not a dependency of the package or its tests).
#
#   bash benchmarks/serve_fuzz.sh MODEL_DIR CLIP_DIR SECONDS OUT_DIR
set -euo pipefail
MODEL=${1:-outputs/demo/dalle}
CLIP=${2:-outputs/demo/clip}
SECONDS_BUDGET=${3:-120}
OUT=${4:-/tmp/serve-fuzz}
PY=.venv/bin/python
mkdir -p "$OUT"
$PY -c "import schemathesis" 2>/dev/null || $PY -m pip install -q "schemathesis>=4,<5"
PORT=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
.venv/bin/dalle serve --model "$MODEL" --clip "$CLIP" --port "$PORT" --out-dir "$OUT/images" \
  --max-images 4 --device cpu > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.2
done
set +e
.venv/bin/schemathesis run "http://127.0.0.1:$PORT/openapi.json" \
  --checks not_a_server_error --max-time "$SECONDS_BUDGET" --workers 2 \
  --phases examples,coverage,fuzzing --suppress-health-check all \
  --report junit --report-dir "$OUT" 2>&1 | tee "$OUT/schemathesis.txt"
STATUS=${PIPESTATUS[0]}
set -e
echo "5xx answers in the server's log: $(grep -cE '" 5[0-9][0-9] ' "$OUT/server.log" || true)"
echo "requests answered: $(grep -cE 'HTTP/1.1" [0-9]{3}' "$OUT/server.log" || true)"
exit "$STATUS"
