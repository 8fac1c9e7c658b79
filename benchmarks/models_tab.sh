#!/usr/bin/env bash
# A headless Chromium screenshot of an experiment's Models tab in the MLflow UI, as a user sees it.
#
#   benchmarks/models_tab.sh [STORE_URI] [EXPERIMENT] [OUT.png]
#   benchmarks/models_tab.sh sqlite:///mlruns/mlflow.db ecomp docs/models_tab.png
#
# Starts `mlflow ui` on a free loopback port for the store, opens
# #/experiments/<id>/models?workflowType=machine_learning in Chromium (Debian's `chromium`
# package: apt-get install chromium), writes the screenshot, stops the server.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STORE="${1:-sqlite:///$ROOT/mlruns/mlflow.db}"
EXPERIMENT="${2:-ecomp}"
OUT="${3:-$ROOT/docs/models_tab.png}"
PY="$ROOT/.venv/bin/python"
CHROME="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$CHROME" ] || { echo "models_tab.sh: no chromium found (apt-get install chromium)" >&2; exit 2; }
EXP_ID="$("$PY" -c "import mlflow,sys; e=mlflow.MlflowClient(sys.argv[1]).get_experiment_by_name(sys.argv[2]); print(e.experiment_id if e else '')" "$STORE" "$EXPERIMENT")"
[ -n "$EXP_ID" ] || { echo "models_tab.sh: no experiment '$EXPERIMENT' in $STORE" >&2; exit 2; }
PORT="$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
LOG="$(mktemp)"
"$ROOT/.venv/bin/mlflow" ui --backend-store-uri "$STORE" --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.5
done
URL="http://127.0.0.1:$PORT/#/experiments/$EXP_ID/models?workflowType=machine_learning"
PROFILE="$(mktemp -d)"
"$CHROME" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$PROFILE" \
  --window-size=1500,900 --virtual-time-budget=20000 --screenshot="$OUT" "$URL" >/dev/null 2>&1
rm -rf "$PROFILE"
echo "models_tab.sh: $URL -> $OUT"
