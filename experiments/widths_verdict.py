"""The width searches against ``l1_finetune`` and EComp at equal MACs and equal fine-tuning.

Reads one MLflow store (every FINISHED run of experiment ``ecomp``, newest per method, settings and
seed) and writes two markdown tables:

1. **At one budget** (``--macs``): each search's returned network (its MACs within the method's
   tolerance of the budget) against ``l1_finetune`` with the same epochs, read off that seed's
   ``l1_finetune`` frontier over its kept fractions at the search's exact MACs (linear
   interpolation, never extrapolated: :func:`experiments.verdict.accuracy_at`).
2. **At EComp's size**: EComp + ``finetune_epochs`` (scenario ``--scenario``) against a search run
   with ``method.macs`` set to the MACs EComp returned for the same seed (``--ecomp-macs`` prints
   those commands).

Differences are paired by seed, test accuracy, with the verdict's BCa bootstrap 95 % interval
(:func:`experiments.verdict.bootstrap_ci`). Cost: mean search, fine-tuning and run seconds.

    python experiments/widths_verdict.py --store sqlite:///mlruns/mlflow.db --macs 0.5
    python experiments/widths_verdict.py --store sqlite:///mlruns/mlflow.db --ecomp-macs
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # noqa: E402  (run as a script)

from experiments.verdict import accuracy_at, bootstrap_ci, points  # noqa: E402

ACC, MACS = "best_test_accuracy", "best_macs_ratio"
SEARCHES = ("random_search", "evolve_widths")
METRICS = (ACC, MACS, "search_seconds", "finetune_seconds", "run_seconds", "best_val_accuracy")


def load(uri: str) -> pd.DataFrame:
    """One row per finished run: method, seed, its labels (score, macs, keep, scenario, finetune_epochs), metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ecomp")
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=1000,
                                  page_token=token)
        for r in page:
            t, m = r.data.tags, r.data.metrics
            if "seed" not in t or t.get("ecomp.kind"):
                continue
            rows.append({"method": t.get("method", "ecomp"), "seed": int(t["seed"]), "score": t.get("score", ""),
                         "macs": float(t.get("macs", "nan")), "keep": float(t.get("keep", "nan")),
                         "scenario": t.get("scenario", ""), "finetune_epochs": int(t.get("finetune_epochs", 0)),
                         "start": r.info.start_time, **{k: m.get(k, math.nan) for k in METRICS}})
        token = page.token
        if not token:
            break
    runs = pd.DataFrame(rows).sort_values("start", ascending=False)
    return runs.drop_duplicates(["method", "seed", "score", "macs", "keep", "scenario", "finetune_epochs"])


def paired(diffs: list[float]) -> tuple[float, float, float]:
    d = np.asarray(diffs, float)
    low, high = bootstrap_ci(d) if len(d) >= 2 else (math.nan, math.nan)
    return float(d.mean()) if len(d) else math.nan, low, high


def row(name: str, other: str, a: list[float], b: list[float], macs: list[float], cost: pd.DataFrame) -> str:
    mean, low, high = paired([x - y for x, y in zip(a, b)])
    ci = "" if math.isnan(low) else f"{points(low)} to {points(high)}"
    cost_s = (f"{cost.search_seconds.mean():.1f} + {cost.finetune_seconds.mean():.1f}"
              if cost.search_seconds.notna().any() else "")
    return (f"| {name} | {other} | {len(a)} | {np.mean(macs):.3f} | {np.mean(a):.4f} | {np.mean(b):.4f} | "
            f"{points(mean)} | {ci} | {cost_s} | {cost.run_seconds.mean():.1f} |")


HEAD = ["| method | against | pairs | mean MACs | method acc. | other acc. | difference (points) | 95 % CI | "
        "search + fine-tuning s | run s |", "|---|---|---|---|---|---|---|---|---|---|"]


def at_budget(runs: pd.DataFrame, macs: float, epochs: int) -> str:
    l1 = runs[(runs.method == "l1_finetune")]
    curves = {s: g.rename(columns={MACS: "best_compression", ACC: "best_test_accuracy"}) for s, g in l1.groupby("seed")}
    lines = list(HEAD)
    for method in SEARCHES:
        for score, g in runs[(runs.method == method) & np.isclose(runs.macs, macs)].groupby("score"):
            a, b, m = [], [], []
            for r in g.sort_values("seed").itertuples():
                base = accuracy_at(curves[r.seed], getattr(r, MACS)) if r.seed in curves else math.nan
                if not math.isnan(base):
                    a.append(getattr(r, ACC)), b.append(base), m.append(getattr(r, MACS))
            if a:
                lines.append(row(f"{method} ({score})", f"l1_finetune, {epochs} epoch(s)", a, b, m, g))
    keeps = ", ".join(f"{k:g}" for k in sorted(l1.keep.unique()))
    lines += ["", f"`l1_finetune` read off each seed's frontier over keep {keeps} at the search's MACs; "
              f"{len(l1.seed.unique())} seeds of it, mean run {l1.run_seconds.mean():.1f} s "
              f"(fine-tuning included)."]
    return "\n".join(lines) + "\n"


def at_ecomp(runs: pd.DataFrame, scenario: str) -> str:
    e = runs[(runs.method == "ecomp") & (runs.scenario == scenario) & (runs.finetune_epochs > 0)]
    lines = list(HEAD)
    for method in SEARCHES:
        for score, g in runs[runs.method == method].groupby("score"):
            a, b, m, used = [], [], [], []
            for r in e.sort_values("seed").itertuples():
                hit = g[(g.seed == r.seed) & np.isclose(g.macs, round(getattr(r, MACS), 4))]
                if len(hit):
                    a.append(hit[ACC].iloc[0]), b.append(getattr(r, ACC)), m.append(getattr(r, MACS))
                    used.append(hit.iloc[:1])
            if a:
                lines.append(row(f"{method} ({score})", f"EComp {scenario}+ft", a, b, m, pd.concat(used)))
    lines += ["", f"EComp {scenario} + fine-tuning: {len(e)} runs, mean run {e.run_seconds.mean():.1f} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--scenario", default="101")
    ap.add_argument("--ecomp-macs", action="store_true", help="print each seed's search command at EComp's MACs")
    args = ap.parse_args()
    runs = load(args.store)
    if args.ecomp_macs:
        e = runs[(runs.method == "ecomp") & (runs.scenario == args.scenario) & (runs.finetune_epochs > 0)]
        for r in e.sort_values("seed").itertuples():
            print(f"seed={r.seed} method.macs={round(getattr(r, MACS), 4)}")
        return
    print(f"## At {args.macs:g} of the parent's MACs\n\n{at_budget(runs, args.macs, args.epochs)}")
    print(f"## At EComp {args.scenario}'s MACs\n\n{at_ecomp(runs, args.scenario)}")


if __name__ == "__main__":
    main()
