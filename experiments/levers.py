"""What each EComp lever changed: every variant of a scenario against the paper's settings.

No MLflow and no plotting here. The input is the EComp runs of
:func:`report_data.load_all_runs` (newest per variant and seed). A run's ``lever`` is
its variant without the scenario: ``paper`` for the paper's settings, else e.g.
``[similarity=cka]`` or ``+ft1``. Differences are paired by seed (same seed, same
training subset and initial population; only runs whose other settings are equal, see
:func:`report_data.base_of`) and get the verdict's BCa bootstrap interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from experiments.verdict import ACCURACY, MIN_PAIRS, SIZE, bootstrap_ci, points

PAPER = "paper"


def with_levers(ecomp: pd.DataFrame) -> pd.DataFrame:
    """``ecomp`` plus a ``lever`` column (``paper`` where the variant is the bare scenario)."""
    out = ecomp.copy()
    out["lever"] = [v[len(s):].strip() or PAPER if isinstance(s, str) and v.startswith(s) else v
                    for v, s in zip(out.variant, out.scenario)]
    return out


def lever_table(ecomp: pd.DataFrame, order: list[str] = ()) -> pd.DataFrame:
    """Per scenario and lever other than the paper's: paired differences (lever - paper) of test
    accuracy and relative size, with their intervals, and a reading."""
    runs = with_levers(ecomp)
    rows = []
    scenarios = [s for s in order if s in set(runs.scenario)] + sorted(set(runs.scenario) - set(order))
    for scenario in scenarios:
        here = runs[runs.scenario == scenario]
        paper = here[here.lever == PAPER].set_index("seed")
        for lever in sorted(set(here.lever) - {PAPER}):
            other = here[here.lever == lever].set_index("seed")
            seeds = sorted(set(paper.index) & set(other.index))
            if "base" in runs:                 # pair only runs that differ in nothing but their levers
                seeds = [k for k in seeds if paper.loc[k, "base"] == other.loc[k, "base"]]
            d_acc = np.array([other.loc[k, ACCURACY] - paper.loc[k, ACCURACY] for k in seeds])
            d_size = np.array([other.loc[k, SIZE] - paper.loc[k, SIZE] for k in seeds])
            enough = len(seeds) >= MIN_PAIRS
            acc_ci = bootstrap_ci(d_acc) if enough else (math.nan, math.nan)
            size_ci = bootstrap_ci(d_size) if enough else (math.nan, math.nan)
            row = {"scenario": scenario, "lever": lever, "n_pairs": len(seeds),
                   "paper_accuracy": paper.loc[seeds, ACCURACY].mean() if seeds else math.nan,
                   "lever_accuracy": other.loc[seeds, ACCURACY].mean() if seeds else math.nan,
                   "accuracy_difference": d_acc.mean() if seeds else math.nan,
                   "accuracy_ci_low": acc_ci[0], "accuracy_ci_high": acc_ci[1],
                   "paper_size": paper.loc[seeds, SIZE].mean() if seeds else math.nan,
                   "lever_size": other.loc[seeds, SIZE].mean() if seeds else math.nan,
                   "size_difference": d_size.mean() if seeds else math.nan,
                   "size_ci_low": size_ci[0], "size_ci_high": size_ci[1]}
            row["reading"] = reading(row)
            rows.append(row)
    return pd.DataFrame(rows)


def _change(what: str, d: float, low: float, high: float, unit: str) -> str:
    if low == high == 0:
        return f"{what} unchanged (in every pair)"
    ci = f"95 % CI {points(low)} to {points(high)}"
    if low > 0:
        return f"{what} up {points(d)[1:]} {unit} ({ci})"
    if high < 0:
        return f"{what} down {points(-d)[1:]} {unit} ({ci})"
    return f"{what} not clearly changed ({ci})"


def reading(row: dict) -> str:
    if row["n_pairs"] < MIN_PAIRS or math.isnan(row["accuracy_ci_low"]):
        return f"too few paired seeds ({row['n_pairs']}; at least {MIN_PAIRS} needed)"
    return (_change("test accuracy", row["accuracy_difference"], row["accuracy_ci_low"], row["accuracy_ci_high"],
                    "points") + "; " +
            _change("size", row["size_difference"], row["size_ci_low"], row["size_ci_high"], "points of the parent's"))


def lever_markdown(table: pd.DataFrame) -> str:
    head = ["scenario", "lever", "pairs", "test acc. paper -> lever", "difference (points), 95 % CI",
            "size paper -> lever", "difference (points), 95 % CI", "reading"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.itertuples(index=False):
        ci = (lambda lo, hi: "" if math.isnan(lo) else f" ({points(lo)} to {points(hi)})")
        lines.append(f"| {r.scenario} | {r.lever} | {r.n_pairs} | {r.paper_accuracy:.4f} -> {r.lever_accuracy:.4f} | "
                     f"{points(r.accuracy_difference)}{ci(r.accuracy_ci_low, r.accuracy_ci_high)} | "
                     f"{r.paper_size:.3f} -> {r.lever_size:.3f} | "
                     f"{points(r.size_difference)}{ci(r.size_ci_low, r.size_ci_high)} | {r.reading} |")
    lines += ["", "Each lever's EComp runs against the paper's settings, same scenario and seed (same training "
              "subset and initial population); differences lever - paper, in points (0.01 of test accuracy, or "
              "of the size relative to the parent); 95 % CI: BCa bootstrap of the mean paired difference."]
    return "\n".join(lines) + "\n"
