"""What tracking costs, as a user waits for it: the whole ``python run.py`` with and without it.

    python benchmarks/bench_overhead.py                 # 3 rounds of the paper's default run
    python benchmarks/bench_overhead.py --rounds 5 seed=1

Three settings of the same run, timed as whole processes from start to exit, interleaved
round by round (so the machine's drift hits all alike), each into a fresh store in a
temporary folder (one store per setting, reused from round to round as a user's
``mlruns/`` is; ``--fresh-store``: a new store for every run, which adds creating its schema):

* ``tracked``: the default (tracking on, the returned network logged as an MLflow Model);
* ``no model``: ``tracking.log_model=false``;
* ``untracked``: ``tracking.enabled=false``.

Prints the median whole-process seconds of each and their ratios to ``untracked``, then, beside
them, the in-process ``run_seconds`` each run reports (its last log line), and the same ratios.
The goal (issue 25): ``tracked`` within 1.25x of ``untracked`` as a whole process, and its
``run_seconds`` within 10 %.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"tracked": [], "no model": ["tracking.log_model=false"], "untracked": ["tracking.enabled=false"]}
RUN_SECONDS = re.compile(r"relative size [0-9.]+, parent [0-9.]+, ([0-9.]+) s")


def one(setting: str, overrides: list[str], tmp: Path, k: int, fresh: bool) -> tuple[float, float]:
    """``(whole-process seconds, the run's own run_seconds)`` of one ``python run.py``."""
    folder = tmp / (f"{setting.replace(' ', '_')}-{k}" if fresh else setting.replace(" ", "_"))
    args = [sys.executable, str(ROOT / "run.py"), *overrides, *SETTINGS[setting], "progress=false",
            "tracking.skip_finished=false",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}", f"hydra.run.dir={folder / 'out'}"]
    return whole_process(args, tmp, f"{setting} run")


def whole_process(args: list[str], cwd: Path, what: str) -> tuple[float, float]:
    """``(seconds from spawn to exit, the run's own seconds from its last log line)`` of one
    ``run.py`` process ``args``; exits with its error output if it fails."""
    return measured_process(args, cwd, what)[:2]


def measured_process(args: list[str], cwd: Path, what: str) -> tuple[float, float, float]:
    """:func:`whole_process` and the process's peak resident memory in GiB (its own, from
    ``wait4``: not its children's)."""
    with tempfile.TemporaryFile("w+") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        sys.exit(f"error: {what} failed:\n{text[-3000:]}")
    found = RUN_SECONDS.search(text)
    if found is None:
        sys.exit(f"error: {what} printed no run_seconds:\n{text[-2000:]}")
    return wall, float(found.group(1)), usage.ru_maxrss / 2 ** 20       # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fresh-store", action="store_true", help="a new MLflow store for every run")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (e.g. seed=1)")
    args = ap.parse_args()
    times: dict[str, list[tuple[float, float]]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="ecomp-overhead-") as d:
        tmp = Path(d)
        for setting in SETTINGS:                    # warm-up: page cache, C library, parent, each store's schema
            one(setting, args.overrides, tmp, -1, args.fresh_store)
        for k in range(args.rounds):
            order = list(SETTINGS) if k % 2 == 0 else list(reversed(SETTINGS))
            for setting in order:
                times[setting].append(one(setting, args.overrides, tmp, k, args.fresh_store))
                print(f"round {k + 1}: {setting:9s} {times[setting][-1][0]:6.2f} s whole, "
                      f"{times[setting][-1][1]:6.2f} s run_seconds", flush=True)
    wall = {s: statistics.median(w for w, _ in v) for s, v in times.items()}
    inner = {s: statistics.median(r for _, r in v) for s, v in times.items()}
    print(f"\nmedians of {args.rounds} interleaved rounds (whole process; in-process run_seconds beside):")
    print("| setting | whole process | vs untracked | run_seconds | vs untracked |")
    print("|---|---|---|---|---|")
    for s in SETTINGS:
        print(f"| {s} | {wall[s]:.2f} s | {wall[s] / wall['untracked']:.2f}x | {inner[s]:.2f} s | "
              f"{inner[s] / inner['untracked']:.2f}x |")


if __name__ == "__main__":
    main()
