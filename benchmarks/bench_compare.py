"""Time this tree against another git revision, whole runs, paired.

    python benchmarks/bench_compare.py 26c06cc                # paper-default run, 3 pairs
    python benchmarks/bench_compare.py HEAD~1 --repeats 5 threads=1 fitness=100

For claims of the form "this change makes a run faster": the revision is checked
out into a temporary git worktree, and the two trees' runs alternate, ``--repeats``
pairs with the first of each pair alternating too (this tree first, then the other
first, ...), each in a fresh Python process that does
one untimed warm-up run and then one timed run, with the same Hydra overrides,
the same FashionMNIST files and the same cached parent (both read from this
tree's ``data.root`` and ``parent.cache_dir``), each into a temporary MLflow
store. These VMs drift in speed from minute to minute, so the figures to read
are the paired ones: for each pair, the other tree's time over this tree's, and
the medians of those ratios. Each tree reports its phases as its own code
defines them (what counts as "forward" has changed over the project's history),
so compare phases across revisions with care; the totals are comparable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in each child process with the tree's root as argv[1]: that tree's ecomp, conf and kernels.
CHILD = r"""
import json, shutil, sys, tempfile, time
root, overrides = sys.argv[1], sys.argv[2:]
sys.path.insert(0, root)
from hydra import compose, initialize_config_dir
try:                                                   # the tree's layout: packages by role, or flat (older)
    from ecomp.app.cli import CONF_DIR, check_overrides
    from ecomp.app.config import register_configs
    from ecomp.app.pipeline import run_experiment
except ImportError:
    from ecomp.cli import CONF_DIR, check_overrides
    from ecomp.config import register_configs
    from ecomp.pipeline import run_experiment
from ecomp.timing import PhaseTimer
register_configs()
store = tempfile.mkdtemp(prefix="ecomp-compare-")       # store and artifacts, removed at the end
base = ["progress=false", f"tracking.uri=sqlite:///{store}/mlflow.db", "tracking.skip_finished=false",
        f"tracking.artifact_location=file://{store}/artifacts"]
try:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=check_overrides(base + overrides))
    run_experiment(cfg)                               # warm-up: data, kernels, store, allocator
    try:                                              # the tree's timer: synchronises a GPU at each phase
        from ecomp.kernels.backend import resolve
        timer = PhaseTimer(resolve(cfg.device).synchronize)
    except ImportError:
        timer = PhaseTimer(cfg.device)
    t = time.perf_counter()
    res = run_experiment(cfg, timer=timer)
    total = time.perf_counter() - t
finally:
    shutil.rmtree(store, ignore_errors=True)
print("RESULT " + json.dumps({"total": total, "phases": dict(timer.seconds),
                              "best_test_accuracy": res.metrics["best_test_accuracy"]}))
"""


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def one_run(tree: Path, overrides: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tree), *overrides], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench_compare: the run in {tree} failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def shared_paths(overrides: list[str]) -> list[str]:
    """Overrides that point the other tree at this tree's data and parent cache (unless given)."""
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from ecomp.app.cli import CONF_DIR, check_overrides
    from ecomp.app.config import register_configs
    from ecomp.app.spec import build

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=check_overrides(list(overrides)))
    spec = build(cfg)
    cache = spec.parent.cache_dir
    given = {o.split("=", 1)[0] for o in overrides}
    extra = [] if "data.root" in given else [f"data.root={spec.data.root.resolve()}"]
    return extra + ([] if "parent.cache_dir" in given else [f"parent.cache_dir={cache.resolve()}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", help="the git revision to compare with (commit, tag, branch, HEAD~1, ...)")
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs (default 3)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for both trees")
    args = ap.parse_intermixed_args()
    if args.repeats < 1:
        raise SystemExit(f"bench_compare: --repeats={args.repeats}: expected an integer >= 1")
    try:
        commit = git("rev-parse", "--verify", f"{args.rev}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"bench_compare: rev={args.rev!r}: not a commit of {ROOT}") from None
    here = git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    overrides = shared_paths(args.overrides) + list(args.overrides)

    with tempfile.TemporaryDirectory(prefix="ecomp-compare-") as tmp:
        other = Path(tmp) / "tree"
        git("worktree", "add", "--detach", str(other), commit)
        try:
            pairs = []
            for r in range(args.repeats):
                if r % 2 == 0:                   # ABBA: which tree goes first alternates
                    mine, theirs = one_run(ROOT, overrides), one_run(other, overrides)
                else:
                    theirs, mine = one_run(other, overrides), one_run(ROOT, overrides)
                pairs.append((mine, theirs))
                print(f"pair {r + 1}: this tree {mine['total']:.2f} s, {args.rev} {theirs['total']:.2f} s "
                      f"(ratio {theirs['total'] / mine['total']:.2f})", flush=True)
        finally:
            try:
                git("worktree", "remove", "--force", str(other))
            except subprocess.CalledProcessError as exc:     # keep the run's own error visible
                print(f"bench_compare: could not remove the worktree {other}: {exc.stderr.strip()}", file=sys.stderr)
            git("worktree", "prune")

    def rest_ratio(run: dict) -> float:
        forward = run["phases"].get("forward", 0.0)
        return (run["total"] - forward) / forward if forward else float("nan")

    med = statistics.median
    print(f"\nthis tree ({here}) against {args.rev} ({commit[:7]}), {args.repeats} pair(s) of runs, "
          f"overrides: {' '.join(args.overrides) or 'none'}")
    for name, idx in (("this tree", 0), (args.rev, 1)):
        runs = [p[idx] for p in pairs]
        phases = sorted({k for run in runs for k in run["phases"]})
        print(f"  {name:>12}: run {med([x['total'] for x in runs]):.2f} s (median); "
              + ", ".join(f"{k} {med([x['phases'].get(k, 0.0) for x in runs]):.2f} s" for k in phases)
              + f"; rest / forward {med([rest_ratio(x) for x in runs]):.2f}"
              + f"; best test accuracy {', '.join(sorted({str(x['best_test_accuracy']) for x in runs}))}")
    ratios = [b["total"] / a["total"] for a, b in pairs]
    print(f"  paired: {args.rev} / this tree, run time {med(ratios):.3f} "
          f"(each pair: {', '.join(f'{x:.2f}' for x in ratios)})")
    common = sorted(set(pairs[0][0]["phases"]) & set(pairs[0][1]["phases"]))
    print("  paired seconds saved per run, by phase (as each tree defines it): "
          + ", ".join(f"{k} {med([b['phases'].get(k, 0.0) - a['phases'].get(k, 0.0) for a, b in pairs]):+.2f}"
                      for k in common))


if __name__ == "__main__":
    main()
