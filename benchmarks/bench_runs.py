"""Whole-process times of the runs a user waits for, per parent kind, against a baseline commit
measured in the same invocation.

    python benchmarks/bench_runs.py                          # this checkout only, 3 rounds
    python benchmarks/bench_runs.py --baseline 8594009       # and that commit, interleaved
    python benchmarks/bench_runs.py --cases cnn,tiny --rounds 5

Each case is one ``python run.py`` started as a fresh process, timed from spawn to exit; the
run's own in-process seconds (its last log line) are read beside it, and the difference is the
fixed cost a user pays outside the work (imports, data, parent, final figures, tracking):

* ``mlp``: the paper's default run (``parent=mlp``), untracked;
* ``cnn``: the same on LeNet-5 (``parent=cnn``), untracked;
* ``resnet``: the same on the residual parent (``parent=resnet``, ResNet-8), untracked;
* ``resnet-bf16``: the same with ``evolution.precision=bfloat16``;
* ``tiny``: ``population.size=6 data.train_size=300``, untracked (almost nothing but fixed cost);
* ``tiny-tracked``: the same, tracked into a store in a temporary folder, logging its model.

``--baseline COMMIT`` checks that commit out into a temporary git worktree and runs its
``run.py`` with this checkout's Python environment, the same parent cache and data, round by
round interleaved with this checkout (so the machine's drift hits both alike). Prints the
medians and the ratios baseline/now, and the CNN run's ratio to the MLP run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_overhead import measured_process     # this folder is the script's: sys.path[0]
from rates import measured_apart

ROOT = Path(__file__).resolve().parents[1]
UNTRACKED = ["tracking.enabled=false"]
TINY = ["population.size=6", "data.train_size=300"]
CASES = {"mlp": ["parent=mlp", *UNTRACKED], "cnn": ["parent=cnn", *UNTRACKED],
         "resnet": ["parent=resnet", *UNTRACKED], "resnet-bf16": ["parent=resnet", "evolution.precision=bfloat16", *UNTRACKED],
         "tiny": [*TINY, *UNTRACKED], "tiny-tracked": TINY}


def one(tree: Path, case: str, tmp: Path, extra: list[str]) -> tuple[float, float, float]:
    """``(whole-process seconds, in-process run seconds, peak GiB)`` of one run of ``case`` from ``tree``."""
    store = tmp / f"store-{tree.name}"
    args = [sys.executable, str(tree / "run.py"), *CASES[case], *extra, "progress=false",
            f"parent.cache_dir={ROOT / '.cache' / 'parents'}", f"data.root={ROOT / 'data'}",
            "tracking.skip_finished=false", f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
            f"hydra.run.dir={tmp / 'out'}"]
    return measured_process(args, tmp, f"{case} from {tree}")


def worktree(commit: str, where: Path) -> Path:
    path = where / f"baseline-{commit[:12]}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                   capture_output=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--baseline", default=None, help="a commit to measure beside this checkout")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed first run of each tree (for long cases such as resnet)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (e.g. threads=1)")
    args = ap.parse_args()
    cases = args.cases.split(",")
    if unknown := [c for c in cases if c not in CASES]:
        sys.exit(f"error: --cases {','.join(unknown)}: one of {', '.join(CASES)}")
    print(f"machine before the runs: {measured_apart()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ecomp-runs-") as d:
        tmp = Path(d)
        trees = {"now": ROOT}
        if args.baseline:
            trees = {"baseline": worktree(args.baseline, tmp), "now": ROOT}
        times = {(t, c): [] for t in trees for c in cases}
        try:
            for tree in trees.values() if not args.no_warmup else ():   # page cache, C library, stores' schemas
                one(tree, cases[0], tmp, args.overrides)
            for k in range(args.rounds):
                for case in cases:
                    order = list(trees) if k % 2 == 0 else list(reversed(trees))
                    for name in order:
                        times[name, case].append(one(trees[name], case, tmp, args.overrides))
                        w, r, peak = times[name, case][-1]
                        print(f"round {k + 1}: {case:12s} {name:8s} {w:7.2f} s whole, {r:7.2f} s in the run, "
                              f"peak {peak:.2f} GiB", flush=True)
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["baseline"])],
                               capture_output=True)
    med = {k: (statistics.median(w for w, _, _ in v), statistics.median(r for _, r, _ in v), max(p for _, _, p in v))
           for k, v in times.items()}
    print(f"\nmedians of {args.rounds} interleaved rounds; fixed = whole process - in the run")
    print("| case | " + " | ".join(f"{t} whole | {t} in run | {t} fixed | {t} peak" for t in trees)
          + (" | baseline/now whole | baseline/now in run |" if args.baseline else " |"))
    print("|---" * (1 + 4 * len(trees) + (2 if args.baseline else 0)) + "|")
    for case in cases:
        cells = [f"{med[t, case][0]:.1f} s | {med[t, case][1]:.1f} s | {med[t, case][0] - med[t, case][1]:.1f} s | "
                 f"{med[t, case][2]:.2f} GiB" for t in trees]
        ratio = ""
        if args.baseline:
            (bw, br, _), (nw, nr, _) = med["baseline", case], med["now", case]
            ratio = f" | {bw / nw:.2f}x | {br / max(nr, 1e-9):.2f}x"
        print(f"| {case} | " + " | ".join(cells) + ratio + " |")
    if "mlp" in cases and "cnn" in cases:
        for t in trees:
            print(f"{t}: cnn/mlp whole process {med[t, 'cnn'][0] / med[t, 'mlp'][0]:.2f}x")
    print(f"machine after the runs: {measured_apart()}")


if __name__ == "__main__":
    main()
