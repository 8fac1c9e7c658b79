"""Time the paper's 70-run grid as a user runs it, and say where the wall time goes.

    python benchmarks/bench_grid.py                      # this tree: 7 scenarios x 10 seeds, 2 joblib jobs
    python benchmarks/bench_grid.py --rev 3c923d2        # that revision's grid first, then this tree's
    python benchmarks/bench_grid.py 'seed=range(2)'      # a smaller grid (any Hydra overrides)

Each grid is one whole ``python run.py -m 'fitness=glob(*)' 'seed=range(10)' hydra/launcher=joblib
hydra.launcher.n_jobs=2`` process, timed from its start to its exit, into a fresh MLflow store in a
temporary folder (both trees read this tree's FashionMNIST files and cached parent). From the
store it splits the wall time: before the first run starts (imports, the sweep's setup, the
joblib workers' start-up), the runs themselves (their summed lengths over the jobs), the gaps
between one job's runs (Hydra's per-job setup), the tail where one worker is idle, and the exit.
With ``--rev`` it also says whether the two grids' runs reached the same test accuracies.
The goal of issue 18: the whole grid in less wall time than one run of the authors'
implementation took on this kind of machine, 536 s (``../shared/REFERENCE.md``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere  # noqa: E402

from bench_compare import git, shared_paths  # noqa: E402
from rates import measured_apart  # noqa: E402

AUTHORS_SECONDS = 536.0
GRID = ["fitness=glob(*)", "seed=range(10)"]


def run_grid(tree: Path, overrides: list[str], jobs: int, tmp: Path) -> tuple[float, str]:
    """``(wall seconds, store URI)`` of one grid in ``tree``; an override of ``fitness`` or
    ``seed`` replaces the grid's own."""
    uri = f"sqlite:///{tmp}/mlflow.db"
    given = {o.split("=", 1)[0] for o in overrides}
    grid = [g for g in GRID if g.split("=", 1)[0] not in given]
    cmd = [sys.executable, "run.py", "-m", *grid, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}",
           f"tracking.uri={uri}", f"tracking.artifact_location=file://{tmp}/artifacts",
           f"hydra.sweep.dir={tmp}/sweep", "progress=false", *overrides]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench_grid: the grid in {tree} failed (exit {proc.returncode}): {tail}")
    return wall, uri


def analyse(uri: str, wall: float, jobs: int) -> dict:
    """Per-scenario run lengths and the split of the wall time, from the store's runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ecomp")
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    data = sorted((r for r in runs if "scenario" in r.data.tags), key=lambda r: r.info.start_time)
    sweep = [r for r in runs if "scenario" not in r.data.tags]
    if any(r.info.status != "FINISHED" for r in data):
        raise SystemExit("bench_grid: a run did not finish")
    by_scenario: dict[str, list[float]] = defaultdict(list)
    for r in data:
        by_scenario[r.data.tags["scenario"]].append(r.data.metrics["run_seconds"])
    lanes: list[list[tuple[int, int]]] = [[] for _ in range(jobs)]    # runs as the workers took them
    for r in data:
        lane = min(lanes, key=lambda lane: lane[-1][1] if lane else 0)
        lane.append((r.info.start_time, r.info.end_time))
    t0 = min(s for lane in lanes for s, _ in lane)
    ends = [lane[-1][1] for lane in lanes if lane]
    spans = sum(e - s for lane in lanes for s, e in lane) / 1000
    gaps = sum(lane[i + 1][0] - lane[i][1] for lane in lanes for i in range(len(lane) - 1)) / 1000
    start = (t0 - min(r.info.start_time for r in sweep)) / 1000 if sweep else float("nan")
    return {"runs": len(data), "by_scenario": dict(sorted(by_scenario.items())),
            "start-up and exit": wall - (max(ends) - t0) / 1000,
            "runs / jobs": spans / jobs, "gaps / jobs": gaps / jobs,
            "idle tail / jobs": sum(max(ends) - e for e in ends) / 1000 / jobs,
            "sweep parent -> first run": start,
            "accuracy": {r.info.run_name: r.data.metrics["best_test_accuracy"] for r in data}}


def report(label: str, wall: float, a: dict) -> None:
    print(f"\n{label}: {a['runs']} runs in {wall:.1f} s wall ({wall / 60:.1f} min), "
          f"{wall / AUTHORS_SECONDS:.2f} x the authors' one run (536 s)")
    print("  where the wall time goes (the last three are per job):")
    for key in ("start-up and exit", "runs / jobs", "gaps / jobs", "idle tail / jobs"):
        print(f"    {key:<18} {a[key]:7.1f} s")
    print(f"    (of the first: sweep parent run -> first run {a['sweep parent -> first run']:.1f} s, "
          "the workers' start-up; the rest is run.py's imports and the sweep's setup, and the exit)")
    print("  run_seconds by scenario: median, sum")
    for sc, secs in a["by_scenario"].items():
        print(f"    {sc}  {statistics.median(secs):6.1f} s  {sum(secs):7.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", help="also time the grid at this git revision (before this tree's)")
    ap.add_argument("--jobs", type=int, default=2, help="joblib jobs (default 2: this machine's cores)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the grid (after its defaults)")
    args = ap.parse_intermixed_args()
    if args.jobs < 1:
        raise SystemExit(f"bench_grid: --jobs={args.jobs}: expected an integer >= 1")
    single = [o for o in args.overrides if not any(t in o.split("=", 1)[-1] for t in (",", "range(", "glob("))]
    overrides = shared_paths(single) + list(args.overrides)            # shared_paths composes: no sweeps
    trees: list[tuple[str, Path]] = []
    print(f"machine before the grids: {measured_apart()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ecomp-grid-") as tmp:
        if args.rev:
            try:
                commit = git("rev-parse", "--verify", f"{args.rev}^{{commit}}")
            except subprocess.CalledProcessError:
                raise SystemExit(f"bench_grid: --rev={args.rev!r}: not a commit of {ROOT}") from None
            other = Path(tmp) / "tree"
            git("worktree", "add", "--detach", str(other), commit)
            trees.append((args.rev, other))
        dirty = git("status", "--porcelain", "--untracked-files=no")
        here = git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")
        trees.append((f"this tree ({here})", ROOT))
        results = []
        try:
            for k, (label, tree) in enumerate(trees):
                store = Path(tmp) / f"store{k}"
                store.mkdir()
                wall, uri = run_grid(tree, overrides, args.jobs, store)
                a = analyse(uri, wall, args.jobs)
                report(label, wall, a)
                results.append((label, wall, a))
        finally:
            if args.rev:
                git("worktree", "remove", "--force", str(Path(tmp) / "tree"))
                git("worktree", "prune")
    print(f"machine after the grids: {measured_apart()}")
    if len(results) == 2:
        (la, wa, aa), (lb, wb, ab) = results
        same = aa["accuracy"] == ab["accuracy"]
        print(f"\n{la} / this tree: {wa / wb:.2f} (wall); every run's test accuracy the same: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
