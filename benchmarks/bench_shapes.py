"""Time per generation of an unbalanced parent against a balanced one with the same parameters.

    python benchmarks/bench_shapes.py                  # 784-300-100-10 vs 784-254-254-10, 3 paired runs
    python benchmarks/bench_shapes.py --repeats 5 --whole

The two parents have 266,610 and 266,710 weights and biases. Each is trained once by the
paper's recipe and cached (``.cache/parents``, about 20 s each the first time). Every
repetition runs the real EComp method (``ECompMethod.run``, paper defaults, scenario 121,
100 generations from the L1 initial population, no tracking) for both architectures in
turn (after one untimed warm-up run of each), so that the machine's drift hits both alike, and records the wall time of every
generation (generation ``k`` = from record ``k - 1`` to record ``k``: breeding plus
evaluation). Prints the median time per generation of each architecture over all
generations of all repetitions, the ratio unbalanced / balanced, and the same for the
first 30 generations (several widths: the loop path) and the rest (one architecture: the
batched path). ``--whole`` also times ``python run.py parent.hidden=[...]`` as fresh
processes (tracking to a temporary store), the wait a user has.
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

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from ecomp.app.cli import CONF_DIR, check_overrides  # noqa: E402
from ecomp.app.config import register_configs  # noqa: E402
from ecomp.nets.data import draw_run_data  # noqa: E402
from ecomp.methods import Problem  # noqa: E402
from ecomp.app.parents import prepare_parent  # noqa: E402
from ecomp.app.spec import build  # noqa: E402

SHAPES = {"unbalanced 300-100": "[300,100]", "balanced 254-254": "[254,254]"}


def compose_spec(hidden: str):
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=check_overrides([f"parent.hidden={hidden}", "progress=false"]))
    return build(cfg)


def generation_times(spec, train, parent) -> list[float]:
    gen = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    data = draw_run_data(train, spec.data.train_size, spec.data.val_size, gen)
    stamps: list[float] = []
    problem = Problem(parent=parent, recipe=spec.parent.recipe, data=data, batch_size=spec.data.batch_size,
                      generator=gen, seed=spec.seed, on_generation=lambda rec: stamps.append(time.perf_counter()))
    spec.method.run(problem)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def whole_process(hidden: str, store: str, cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), f"parent.hidden={hidden}", f"tracking.uri={store}",
                           "tracking.skip_finished=false", "progress=false", f"hydra.run.dir={cwd / 'out'}"],
                          cwd=cwd, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--whole", action="store_true", help="also time run.py as fresh processes")
    a = ap.parse_args()
    problems = {}
    for label, hidden in SHAPES.items():
        spec = compose_spec(hidden)
        train, parent = prepare_parent(spec.parent, spec.data)
        params = sum(w.numel() + b.numel() for w, b in parent.layers)
        print(f"{label}: {params:,} weights and biases", flush=True)
        problems[label] = (spec, train, parent)
    for label, (spec, train, parent) in problems.items():       # warm-up (kernels built, caches filled): not timed
        generation_times(spec, train, parent)
    times: dict[str, list[list[float]]] = {label: [] for label in SHAPES}
    for r in range(a.repeats):
        for label, (spec, train, parent) in problems.items():
            times[label].append(generation_times(spec, train, parent))
            print(f"  repeat {r + 1}, {label}: {1000 * statistics.median(times[label][-1]):.1f} ms per generation",
                  flush=True)
    print(f"\nmedian ms per generation ({torch.get_num_threads()} threads, {a.repeats} paired runs of 100 generations):")
    print(f"{'':<22} {'all':>8} {'gen 1-30':>9} {'gen 31-100':>11}")
    med = {}
    for label, runs in times.items():
        med[label] = [statistics.median([t for run in runs for t in run[s]])
                      for s in (slice(None), slice(0, 30), slice(30, None))]
        print(f"{label:<22} " + " ".join(f"{1000 * m:>8.1f}" for m in med[label]))
    un, ba = med["unbalanced 300-100"], med["balanced 254-254"]
    print(f"{'ratio unbalanced/bal.':<22} " + " ".join(f"{u / b:>8.2f}x" for u, b in zip(un, ba)))
    if a.whole:
        with tempfile.TemporaryDirectory() as tmp:
            store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
            whole_process(SHAPES["balanced 254-254"], store, Path(tmp))          # the store's schema, once
            walls = {label: [] for label in SHAPES}
            for _ in range(a.repeats):
                for label, hidden in SHAPES.items():
                    walls[label].append(whole_process(hidden, store, Path(tmp)))
            print("\nwhole process (python run.py, median s): " + ", ".join(
                f"{label} {statistics.median(w):.2f}" for label, w in walls.items()) +
                f"; ratio {statistics.median(walls['unbalanced 300-100']) / statistics.median(walls['balanced 254-254']):.2f}x")


if __name__ == "__main__":
    main()
