"""What an Optuna search (``python run.py -m hydra/sweeper=optuna``) found, from its MLflow runs.

No Hydra and no plotting here. The input is :func:`report_data.load_all_runs`'s table, whose
``study`` and ``trial`` columns come from the runs' ``optuna_study`` / ``optuna_trial`` tags.
:func:`trial_table` averages each trial's runs (its seeds); :func:`front_table` keeps each
study's Pareto front in (validation accuracy, relative size in hidden units: the axes of the
baselines' frontier), adds the front's settings (the searched keys, from the runs' params) and
its test accuracy, which is reported for these points only, and, at each point's size, the
baselines' mean test accuracy read off their frontier (linear interpolation, never extrapolated)
and the paper's 121 for reference.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from experiments.report_data import pareto_mask

VAL, TEST, SIZE = "best_val_accuracy", "best_test_accuracy", "best_compression"
SPACE_PARAM = "search.space."          # the study's parent run logs its space as search.space.<key>


def trial_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (study, trial): the means over its runs (seeds) and one run id to read its settings from."""
    if trials.empty:
        return pd.DataFrame(columns=["study", "trial", "n_seeds", VAL, SIZE, TEST, "run_id"])
    g = trials.assign(trial=trials.trial.astype(int)).groupby(["study", "trial"], sort=True)
    out = g.agg(n_seeds=("seed", "nunique"), **{VAL: (VAL, "mean"), SIZE: (SIZE, "mean"), TEST: (TEST, "mean")},
                run_id=("run_id", "first"))
    return out.reset_index()


def front_mask(table: pd.DataFrame) -> np.ndarray:
    """True for trials no other trial of the same study beats in both validation accuracy and size."""
    mask = np.zeros(len(table), dtype=bool)
    for _, idx in table.groupby("study").groups.items():
        sub = table.loc[idx]
        mask[table.index.get_indexer(idx)] = pareto_mask(sub[SIZE].to_numpy(), sub[VAL].to_numpy())
    return mask


def accuracy_at(curve: pd.DataFrame, size: float) -> float:
    """A baseline's mean test accuracy at ``size`` (frontier_table columns), NaN outside its measured sizes."""
    c = curve.sort_values("size_mean")
    x, y = c.size_mean.to_numpy(), c.test_accuracy_mean.to_numpy()
    if len(x) == 0 or not x[0] - 1e-12 <= size <= x[-1] + 1e-12:
        return math.nan
    return float(np.interp(size, x, y))


def front_table(trials: pd.DataFrame, settings: dict[str, dict[str, str]], frontier: pd.DataFrame,
                reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """The front of each study, smallest first: settings (``settings[run_id]``: searched key -> value),
    validation and test accuracy, size, and each baseline's test accuracy at that size; ``reference``
    rows (e.g. the paper's 121, same columns as :func:`trial_table`) are added with kind ``paper``."""
    table = trial_table(trials)
    front = table[front_mask(table)].assign(kind="search front")
    if reference is not None and not reference.empty:
        front = pd.concat([front, reference.assign(kind="paper")], ignore_index=True)
    rows = []
    for _, r in front.sort_values(["kind", "study", SIZE], kind="stable").iterrows():
        row = {"kind": r.kind, "study": r.study, "trial": r.trial, "n_seeds": r.n_seeds, "size": r[SIZE],
               "val_accuracy": r[VAL], "test_accuracy": r[TEST], **settings.get(r.run_id, {})}
        for variant, curve in frontier.groupby("variant", sort=True):
            row[f"{variant} at this size"] = accuracy_at(curve, r[SIZE])
        rows.append(row)
    return pd.DataFrame(rows)


def front_markdown(front: pd.DataFrame, n_trials: dict[str, int], parent_accuracy: float) -> str:
    """``search_front.md``: the table, in points against each baseline, and how to read it."""
    baselines = [c for c in front.columns if c.endswith(" at this size")]
    settings = [c for c in front.columns if c.startswith(("fitness.", "operators.", "population.", "similarity."))]
    head = ["", "trial", "size", "val acc", "test acc", *[c.replace(" at this size", "") for c in baselines],
            *[c.split(".")[-1] for c in settings]]
    lines = ["# What the search found", "",
             "Pareto front of each study in (validation accuracy, relative size in hidden units); test accuracy "
             "of the front's networks; the baselines' columns are their mean test accuracy at the same size "
             "(frontier.csv, interpolated; blank outside their measured sizes) minus the point's, in points "
             "(negative: the baseline is better).", ""]
    for study, f in front.groupby("study", sort=False):
        label = (f"study {study} ({n_trials.get(study, 0)} runs; trials that repeat a setting share its run)"
                 if study else "reference: the paper's 121, mean over its seeds")
        lines += [f"## {label}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in f.iterrows():
            def num(x, fmt=".4f"):
                return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)
            cells = [r.kind, "" if r.kind == "paper" else str(int(r.trial)), num(r["size"], ".3f"),
                     num(r.val_accuracy), num(r.test_accuracy),
                     *[num(100 * (r.test_accuracy - r[c]), "+.1f") for c in baselines],
                     *[_short(r.get(c)) for c in settings]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"Parent network test accuracy: {parent_accuracy:.4f}.")
    return "\n".join(lines) + "\n"


def _short(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)
