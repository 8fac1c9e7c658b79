#!/usr/bin/env bash
# The README's "across machines" commands on one machine, end to end, timed:
# a Ray head and an MLflow server on 127.0.0.1, a sweep with hydra/launcher=ray
# logging to the server, then both services stopped (only the processes this
# script started: each runs in a process group of its own; `ray stop` would
# also stop every other Ray cluster on the machine).
#
#   benchmarks/ray_smoke.sh                                   # 2 small runs
#   benchmarks/ray_smoke.sh 'fitness=glob(*)' 'seed=range(10)'  # any sweep
#
# Env: PYTHON (default .venv/bin/python), MLFLOW_PORT (5000), RAY_PORT (6379),
# RAY_ADDRESS (default 127.0.0.1:$RAY_PORT; empty: Ray finds the cluster started
# here, as `address: auto` in conf/hydra/launcher/ray.yaml does for users),
# WORK (a scratch folder for the store, artifacts and logs; default a new one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PYTHON")
MLFLOW_PORT=${MLFLOW_PORT:-5000}
RAY_PORT=${RAY_PORT:-6379}
WORK=${WORK:-$(mktemp -d /tmp/ecomp-ray-smoke-XXXXXX)}
SWEEP=("$@")
if [ ${#SWEEP[@]} -eq 0 ]; then
  SWEEP=(fitness=120,021 seed=0 'parent.hidden=[32,32]' parent.epochs=1 population.size=10
         data.train_size=500 data.test_size=1000 progress=false "parent.cache_dir=$WORK/parents")
fi
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

stop() {  # SIGTERM the group, SIGKILL what is left
  local pid=$1
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 -- "-$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
RAY_PID= MLFLOW_PID=
trap '[ -n "$RAY_PID" ] && stop "$RAY_PID"; [ -n "$MLFLOW_PID" ] && stop "$MLFLOW_PID"' EXIT

t0=$(date +%s.%N)
setsid "$BIN/ray" start --head --block --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
  --include-dashboard=false --disable-usage-stats >"$WORK/ray.log" 2>&1 & RAY_PID=$!
setsid "$BIN/mlflow" server --backend-store-uri "sqlite:///$WORK/mlflow.db" \
  --artifacts-destination "$WORK/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" >"$WORK/mlflow.log" 2>&1 &
MLFLOW_PID=$!
for _ in $(seq 240); do
  grep -q "Ray runtime started" "$WORK/ray.log" && curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null && break
  kill -0 "$RAY_PID" "$MLFLOW_PID" 2>/dev/null || { tail -20 "$WORK"/*.log; exit 1; }
  sleep 0.5
done
t1=$(date +%s.%N)
echo "services up in $(echo "$t1 - $t0" | bc) s (logs in $WORK)"

RAY_ADDRESS=${RAY_ADDRESS-127.0.0.1:$RAY_PORT} "$PYTHON" run.py -m "${SWEEP[@]}" hydra/launcher=ray \
  "tracking.uri=http://127.0.0.1:$MLFLOW_PORT" "hydra.sweep.dir=$WORK/multirun"
t2=$(date +%s.%N)
echo "sweep on Ray: $(echo "$t2 - $t1" | bc) s"
"$PYTHON" - "http://127.0.0.1:$MLFLOW_PORT" <<'EOF'
import collections, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
exp = client.get_experiment_by_name("ecomp")
runs = client.search_runs([exp.experiment_id], max_results=10000)
print("runs in the server's store:", dict(collections.Counter(r.info.status for r in runs)))
EOF
