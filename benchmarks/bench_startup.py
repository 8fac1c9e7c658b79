"""How long a user waits for the first generation: the whole process against the in-process work.

    python benchmarks/bench_startup.py                 # the paper's default run, 5 repeats
    python benchmarks/bench_startup.py --repeats 9

Each repeat starts ``python run.py`` as a fresh process (tracking to a temporary SQLite store
whose schema was created by a first, untimed run: the warm machine of a user's second run)
and reads the timestamp MLflow gave generation 0's metrics: *command -> first generation* is
that time minus the moment the process was spawned. The in-process work before the first
generation (data draw, the initial population, generation 0's evaluation, from a config
already composed, the store and data already open) is measured the same way inside one
process, on the second of two runs there. Prints medians: both figures and their difference,
the start-up cost a user pays on top of the work; also the whole run's wall time and its
in-process ``run_seconds``, and the import times of the heavy libraries alone for scale.
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


def first_generation_time(uri: str, run_id: str) -> float:
    from mlflow.tracking import MlflowClient

    (m,) = [m for m in MlflowClient(uri).get_metric_history(run_id, "accuracy_mean") if m.step == 0]
    return m.timestamp / 1000


def newest_run(uri: str) -> tuple[str, dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ecomp")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    return run.info.run_id, run.data.metrics


def whole_process(args: list[str], uri: str, cwd: Path) -> tuple[float, float, float]:
    """(command -> first generation, command -> exit, run_seconds) of one fresh ``run.py``."""
    t = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"tracking.uri={uri}",
                           "tracking.skip_finished=false", "progress=false", f"hydra.run.dir={cwd / 'out'}"],
                          cwd=cwd, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    wall = time.time() - t
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    run_id, metrics = newest_run(uri)
    return first_generation_time(uri, run_id) - t, wall, metrics["run_seconds"]


def in_process(args: list[str], uri: str, repeats: int) -> list[float]:
    """Call -> first generation inside one process, for runs after a first warm-up run."""
    from hydra import compose, initialize_config_dir

    from ecomp.app.cli import CONF_DIR, check_overrides
    from ecomp.app.config import register_configs
    from ecomp.app.pipeline import run_experiment

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=check_overrides(
            [*args, f"tracking.uri={uri}", "tracking.skip_finished=false", "progress=false"]))
    out = []
    for i in range(repeats + 1):
        t = time.time()
        run_id = run_experiment(cfg).run_id
        if i:
            out.append(first_generation_time(uri, run_id) - t)
    return out


def import_time(module: str) -> float:
    t = time.time()
    subprocess.run([sys.executable, "-c", "pass" if module == "pass" else f"import {module}"], check=True)
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("overrides", nargs="*", help="run.py overrides (default: none, the paper's run)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        whole_process(a.overrides, uri, tmp)                               # the store's schema, once
        runs = [whole_process(a.overrides, uri, tmp) for _ in range(a.repeats)]
        inside = in_process(a.overrides, uri, a.repeats)
    first, wall, run_s = (statistics.median(x) for x in zip(*runs))
    work = statistics.median(inside)
    imports = {m: statistics.median([import_time(m) for _ in range(3)]) for m in ("pass", "torch", "mlflow")}
    print(f"run.py {' '.join(a.overrides) or '(paper defaults)'}, medians of {a.repeats}:")
    print(f"  command -> first generation        {first:6.2f} s")
    print(f"  in process -> first generation     {work:6.2f} s")
    print(f"  start-up cost (difference)         {first - work:6.2f} s")
    print(f"  command -> exit                    {wall:6.2f} s   (run_seconds in process: {run_s:.2f} s)")
    print("  imports alone (fresh python -c): " + ", ".join(
        f"{m if m != 'pass' else 'python'} {t:.2f} s" for m, t in imports.items()))


if __name__ == "__main__":
    main()
