"""Time each compression method at its defaults, inside the process and as a whole process.

    python benchmarks/bench_baselines.py                 # every method; EComp is the baseline of the ratios
    python benchmarks/bench_baselines.py --repeats 7
    python benchmarks/bench_baselines.py --sweep         # also the 320-run baseline sweep (about 5-10 min)

Every run logs to a temporary MLflow store (tracking is part of what a user waits for)
with ``tracking.skip_finished=false``, so repeats are real runs. Reports per method the
median seconds inside the process (the run's ``run_seconds``: data draw, the method,
the shared measurements, the artifact) and the median wall time of ``python run.py
method=<m>`` as a fresh process, each also as a ratio to one paper-default EComp run
measured in the same invocation. ``--sweep`` times the issue's sweep command
(4 methods x 8 kept fractions x 10 seeds, Hydra's basic launcher) as one process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere  # noqa: E402

from hydra import compose, initialize_config_dir  # noqa: E402

from ecomp.app.cli import CONF_DIR, check_overrides  # noqa: E402
from ecomp.app.config import register_configs  # noqa: E402
from ecomp.app.pipeline import run_experiment  # noqa: E402

METHODS = ("l1_prune", "l1_finetune", "distill", "scratch", "ecomp")
SWEEP = ["-m", "method=l1_prune,l1_finetune,scratch,distill", "method.keep=0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
         "seed=range(10)"]


def in_process(method: str, store: str, repeats: int) -> list[float]:
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=check_overrides(
            [f"method={method}", f"tracking.uri={store}", "tracking.skip_finished=false", "progress=false"]))
    return [run_experiment(cfg).metrics["run_seconds"] for _ in range(repeats)]


def whole_process(args: list[str], store: str, repeats: int, cwd: Path) -> list[float]:
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"tracking.uri={store}", "tracking.skip_finished=false",
           "progress=false", f"hydra.run.dir={cwd / 'outputs'}", f"hydra.sweep.dir={cwd / 'multirun'}"]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
        times.append(time.perf_counter() - t)
        if proc.returncode:
            raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per method in the process (EComp: 3)")
    ap.add_argument("--process-repeats", type=int, default=3, help="fresh processes per method")
    ap.add_argument("--sweep", action="store_true", help="also time the 320-run baseline sweep")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = f"sqlite:///{tmp / 'mlflow.db'}"
        whole_process(["method=l1_prune"], store, 1, tmp)          # creates the store's schema once
        rows = {}
        for m in METHODS:
            inside = in_process(m, store, min(a.repeats, 3) if m == "ecomp" else a.repeats)
            proc = whole_process([f"method={m}"], store, a.process_repeats, tmp)
            rows[m] = (statistics.median(inside), statistics.median(proc))
            print(f"  {m}: in process {inside}, whole process {[round(t, 2) for t in proc]}", flush=True)
        base_in, base_proc = rows["ecomp"]
        print(f"\n{'method':<12} {'in process s':>13} {'/ ecomp':>8} {'whole process s':>16} {'/ ecomp':>8}")
        for m, (inside, proc) in rows.items():
            print(f"{m:<12} {inside:>13.2f} {inside / base_in:>8.3f} {proc:>16.2f} {proc / base_proc:>8.3f}")
        print(f"(medians; in process: {a.repeats} runs, EComp {min(a.repeats, 3)}; whole process: "
              f"{a.process_repeats} fresh `python run.py method=<m>`, torch threads = all cores)")
        if a.sweep:
            sweep_store = f"sqlite:///{tmp / 'sweep.db'}"
            t = whole_process(SWEEP, sweep_store, 1, tmp)[0]
            print(f"\nbaseline sweep, 320 runs, one process (basic launcher): {t:.0f} s wall "
                  f"= {t / 60:.1f} min, {t / 320:.2f} s a run; one EComp run in process: {base_in:.1f} s")


if __name__ == "__main__":
    main()
