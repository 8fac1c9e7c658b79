#!/usr/bin/env bash
# Screenshots of the MLflow UI as a researcher opens it, from a tiny sweep of its own.
#
#   benchmarks/ui_screenshots.sh [OUT_DIR]          # default docs/ (about 2 minutes on 2 cores)
#
# Runs a 2-scenario x 2-seed sweep (a 784-32-32-10 parent, 6 individuals) into a temporary SQLite
# store, draws its report onto the sweep's run (experiments/figures.py), starts `mlflow ui` on a free
# loopback port and takes, with headless Chromium (Debian's `chromium`: apt-get install chromium):
#   ui_runs.png          the runs list grouped by scenario (the README's ecomp-scenarios link)
#   ui_sweep_run.png     the sweep's run: its per-scenario summary metrics
#   ui_sweep_figure.png  one of the report's figures on that run (its artifacts)
#   models_tab.png       the experiment's Models tab
# then stops the server and removes the store.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/docs}" && cd "${1:-$ROOT/docs}" && pwd)"
PY="$ROOT/.venv/bin/python"
CHROME="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$CHROME" ] || { echo "ui_screenshots.sh: no chromium found (apt-get install chromium)" >&2; exit 2; }
WORK="$(mktemp -d)"
SERVER=""
trap '[ -z "$SERVER" ] || kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
STORE="sqlite:///$WORK/mlflow.db"
SMALL=("parent.hidden=[32,32]" parent.epochs=1 population.size=6 data.train_size=300 data.batch_size=100
       data.test_size=1000 progress=false "parent.cache_dir=$WORK/parents" "tracking.uri=$STORE")

cd "$WORK"
"$PY" "$ROOT/run.py" -m fitness=120,121 seed=0,1 "${SMALL[@]}" "hydra.sweep.dir=$WORK/multirun"
"$PY" "$ROOT/experiments/figures.py" "tracking.uri=$STORE" "output_dir=$WORK/report" \
  "grid.scenarios=[120,121]" "grid.seeds=[0,1]"
read -r EXP_ID RUN_ID < <("$PY" -c "
import sys, mlflow
client = mlflow.MlflowClient(sys.argv[1])
exp = client.get_experiment_by_name('ecomp').experiment_id
(run,) = client.search_runs([exp], \"tags.\`ecomp.kind\` = 'sweep'\")
print(exp, run.info.run_id)" "$STORE")

PORT="$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$ROOT/.venv/bin/mlflow" ui --backend-store-uri "$STORE" --host 127.0.0.1 --port "$PORT" >"$WORK/ui.log" 2>&1 &
SERVER=$!
for _ in $(seq 240); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "ui_screenshots.sh: mlflow ui did not start" >&2; tail -5 "$WORK/ui.log" >&2; exit 1; }
BASE="http://127.0.0.1:$PORT/#/experiments/$EXP_ID"
shot() {   # shot NAME URL: one page, as a 1920x1000 window shows it once the page has settled
  "$CHROME" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$WORK/profile-$1" \
    --window-size=1920,1000 --virtual-time-budget=20000 --screenshot="$OUT/$1.png" "$2" >/dev/null 2>&1
  echo "ui_screenshots.sh: $2 -> $OUT/$1.png"
}
shot ui_runs "$BASE/runs?workflowType=machine_learning&viewStateShareKey=ecomp-scenarios"
shot ui_sweep_run "$BASE/runs/$RUN_ID?workflowType=machine_learning"
shot ui_sweep_figure "$BASE/runs/$RUN_ID/artifacts/report/fig2_accuracy.png?workflowType=machine_learning"
shot models_tab "$BASE/models?workflowType=machine_learning"
