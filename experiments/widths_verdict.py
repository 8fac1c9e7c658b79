"""The width searches against ``l1_finetune`` and EComp at equal MACs and equal fine-tuning.

No MLflow and no plotting in the tables: the input is :func:`report_data.load_all_runs`'s table,
one parent kind and one data/parent setup (``figures.py`` narrows it so, and so does :func:`main`).
Two comparisons, test accuracy, paired by seed:

1. **At the search's budget**: each search variant (method and its non-default settings: score,
   ``macs``...; not the runs placed at EComp's sizes, which are the second table's) against each ``l1_finetune`` variant fine-tuned alike (the same ``epochs`` and
   ``lr``), read off that seed's ``l1_finetune`` frontier over its kept fractions at the search's
   exact MACs (linear interpolation, never extrapolated: :func:`experiments.verdict.compare`).
2. **At EComp's size**: EComp + ``finetune_epochs`` (variant ``<scenario>+ftN``) against a search
   with the same epochs run with ``method.macs`` set to the MACs EComp returned for the same seed,
   rounded to 4 decimals (``--ecomp-macs`` prints those overrides).

The interval is the verdict's (BCa bootstrap of the mean difference, at least
:data:`experiments.verdict.MIN_PAIRS` pairs). Cost: the search's mean search, fine-tuning and run
seconds and the other side's mean run seconds. ``figures.py`` writes the tables as ``widths.csv``
and ``widths.md`` beside the verdict; this script prints them:

    python experiments/widths_verdict.py --store sqlite:///mlruns/mlflow.db --parent cnn
    python experiments/widths_verdict.py --store sqlite:///mlruns/mlflow.db --parent cnn --ecomp-macs 101+ft1
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # noqa: E402  (run as a script)

from experiments.verdict import ACCURACY, MIN_PAIRS, SIZE, bootstrap_ci, compare, points  # noqa: E402

MACS = "best_macs_ratio"
DEFAULT_EPOCHS = "1"     # the searches' and l1_finetune's default epochs (held equal by tests/test_widths_verdict.py)
COLUMNS = ["search", "against", "n_runs", "n_pairs", "macs_mean", "search_accuracy", "other_accuracy", "difference",
           "ci_low", "ci_high", "search_seconds", "finetune_seconds", "run_seconds", "other_run_seconds"]


def without_macs(variant: str) -> str:
    """A search's variant without its ``macs=`` label: the searches one scenario's EComp sizes pair with."""
    name, _, rest = variant.partition(" (")
    labels = [x for x in rest.rstrip(")").split(", ") if x and not x.startswith("macs=")]
    return name + (f" ({', '.join(labels)})" if labels else "")


def _row(search: pd.DataFrame, against: str, other: pd.DataFrame, pairs: dict) -> dict:
    seconds = (lambda df, k: float(df[k].mean()) if df[k].notna().any() else math.nan)
    return {"against": against, "n_runs": len(search), "n_pairs": pairs["n_pairs"], "macs_mean": pairs["size_mean"],
            "search_accuracy": pairs["ecomp_accuracy"], "other_accuracy": pairs["baseline_accuracy"],
            "difference": pairs["difference"], "ci_low": pairs["ci_low"], "ci_high": pairs["ci_high"],
            **{k: seconds(search, k) for k in ("search_seconds", "finetune_seconds", "run_seconds")},
            "other_run_seconds": seconds(other, "run_seconds")}


def is_search(runs: pd.DataFrame) -> pd.Series:
    """Which runs are width searches: every one logs ``search_seconds`` (:mod:`ecomp.methods.width_search`),
    no other method does, so a new search method needs no entry here."""
    if "search_seconds" not in runs:
        return pd.Series(False, index=runs.index, dtype=bool)
    return runs["search_seconds"].notna()


def at_ecomp_size(runs: pd.DataFrame) -> pd.Series:
    """Which runs are searches placed at a fine-tuned EComp run's MACs (same seed, ``macs`` label =
    EComp's MACs to 4 decimals): they belong to :func:`ecomp_table`, not to a budget's row."""
    ecomp = runs[(runs.method == "ecomp") & (runs.finetune_epochs > 0)]
    placed = {(seed, round(m, 4)) for seed, m in zip(ecomp.seed, ecomp[MACS])}
    return is_search(runs) & pd.Series([(k, round(m, 4)) in placed for k, m in zip(runs.seed, runs.macs)],
                                                  index=runs.index, dtype=bool)


def budget_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each search variant (but those at EComp's sizes) against each ``l1_finetune`` variant with the
    same ``epochs`` and ``lr`` labels, at the search's MACs (see the module's docstring)."""
    in_macs = runs[~at_ecomp_size(runs)].assign(**{SIZE: lambda d: d[MACS]})
    searches, l1 = in_macs[is_search(in_macs)], in_macs[in_macs.method == "l1_finetune"]
    rows = []
    for variant, s in searches.groupby("variant", sort=True):
        tuned = l1[(l1.epochs == s.epochs.iloc[0]) & (l1.lr == s.lr.iloc[0])]
        for baseline, b in tuned.groupby("variant", sort=True):
            rows.append({"search": variant, **_row(s, baseline, b, compare(s, b))})
    return pd.DataFrame(rows, columns=COLUMNS)


def ecomp_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each fine-tuned EComp variant against each search (its ``macs`` label aside) whose runs sit at
    the same seed's EComp MACs and whose ``epochs`` equal EComp's ``finetune_epochs``."""
    ecomp = runs[(runs.method == "ecomp") & (runs.finetune_epochs > 0)]
    searches = runs[is_search(runs)].assign(family=lambda d: d.variant.map(without_macs))
    rows = []
    for variant, e in ecomp.groupby("variant", sort=True):
        epochs = str(int(e.finetune_epochs.iloc[0]))
        for family, s in searches.groupby("family", sort=True):
            if (s.epochs.iloc[0] or DEFAULT_EPOCHS) != epochs:
                continue
            pairs, used = [], []
            for r in e.sort_values("seed").itertuples():
                hit = s[(s.seed == r.seed) & np.isclose(s.macs, round(getattr(r, MACS), 4))]
                if len(hit):
                    h = hit.iloc[0]
                    pairs.append((h[MACS], h[ACCURACY], getattr(r, ACCURACY)))
                    used.append(hit.iloc[:1])
            if not pairs:
                continue
            p = np.array(pairs)
            d = p[:, 1] - p[:, 2]
            low, high = bootstrap_ci(d) if len(d) >= MIN_PAIRS else (math.nan, math.nan)
            both = {"n_pairs": len(d), "size_mean": float(p[:, 0].mean()), "ecomp_accuracy": float(p[:, 1].mean()),
                    "baseline_accuracy": float(p[:, 2].mean()), "difference": float(d.mean()),
                    "ci_low": low, "ci_high": high}
            rows.append({"search": family, **_row(pd.concat(used), f"EComp {variant}", e, both)})
    return pd.DataFrame(rows, columns=COLUMNS)


def ecomp_overrides(runs: pd.DataFrame, variant: str) -> list[str]:
    """``seed=<k> method.macs=<EComp's MACs>`` for each run of the fine-tuned EComp ``variant``."""
    e = runs[(runs.method == "ecomp") & (runs.variant == variant)].sort_values("seed")
    return [f"seed={r.seed} method.macs={round(getattr(r, MACS), 4)}" for r in e.itertuples()]


def markdown(budget: pd.DataFrame, at_ecomp: pd.DataFrame, notes: list[str] = ()) -> str:
    """``widths.md``: both tables in points, then how they were computed."""
    head = ["search", "against", "pairs of runs", "mean MACs", "search acc.", "other acc.", "difference (points)",
            "95 % CI", "search + fine-tuning s", "run s", "other's run s"]

    def num(x: float, fmt: str) -> str:
        return "" if math.isnan(x) else format(x, fmt)

    lines = []
    for title, table in (("At the search's MACs budget", budget), ("At EComp's MACs, EComp fine-tuned alike", at_ecomp)):
        lines += [f"### {title}", ""]
        if table.empty:
            lines += ["(no runs to pair)", ""]
            continue
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in table.itertuples(index=False):
            ci = "" if math.isnan(r.ci_low) else f"{points(r.ci_low)} to {points(r.ci_high)}"
            diff = "" if math.isnan(r.difference) else points(r.difference)
            cost = ("" if math.isnan(r.search_seconds) else
                    f"{r.search_seconds:.1f} + {num(r.finetune_seconds, '.1f')}")
            lines.append(f"| {r.search} | {r.against} | {r.n_pairs} of {r.n_runs} | {num(r.macs_mean, '.3f')} | "
                         f"{num(r.search_accuracy, '.4f')} | {num(r.other_accuracy, '.4f')} | {diff} | {ci} | {cost} | "
                         f"{num(r.run_seconds, '.1f')} | {num(r.other_run_seconds, '.1f')} |")
        lines.append("")
    lines += ["Test accuracy, paired by seed; means over the paired runs. At the budget, `l1_finetune`'s accuracy at "
              "the search's MACs is read off the same seed's frontier by linear interpolation (never extrapolated); "
              "at EComp's size, the search ran with `method.macs` = that seed's EComp MACs. The 95 % CI is a BCa "
              f"bootstrap of the mean difference (at least {MIN_PAIRS} pairs). 1 point = 0.01 test accuracy."]
    lines += [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"


def widths_files(runs: pd.DataFrame, out: Path, notes: list[str] = ()) -> list[Path]:
    """``widths.csv`` and ``widths.md`` when ``runs`` (one parent kind and setup) hold width searches
    (else none); the newest run of each variant, kept fraction and seed counts."""
    from experiments.report_data import pick_newest

    if not is_search(runs).any():
        return []
    runs, _ = pick_newest(runs, by=("variant", "keep"))
    budget, at_ecomp = budget_table(runs), ecomp_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat([budget.assign(table="budget"), at_ecomp.assign(table="ecomp")]).to_csv(out / "widths.csv", index=False)
    (out / "widths.md").write_text(markdown(budget, at_ecomp, list(notes)))
    return [out / "widths.csv", out / "widths.md"]


def main() -> None:
    from experiments.report_data import ReportError, load_all_runs, pick_newest

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True, help="the MLflow tracking URI, e.g. sqlite:///mlruns/mlflow.db")
    ap.add_argument("--parent", default="mlp", help="the parent kind whose runs are paired (mlp, cnn, resnet, ...)")
    ap.add_argument("--ecomp-macs", metavar="VARIANT",
                    help="print each seed's overrides for a search at this fine-tuned EComp variant's MACs, e.g. 101+ft1")
    args = ap.parse_args()
    try:
        runs = load_all_runs(args.store, "ecomp")
    except ReportError as exc:
        sys.exit(f"error: {exc}")
    kinds = sorted(set(runs.parent_kind))
    runs = runs[runs.parent_kind == args.parent]
    if runs.empty:
        sys.exit(f"error: --parent={args.parent}: no FINISHED runs of that parent kind in {args.store} "
                 f"(found: {', '.join(kinds)})")
    setup = runs.setup.value_counts().index[0]
    notes = [] if runs.setup.nunique() == 1 else [f"runs of {runs.setup.nunique()} data/parent setups; "
                                                   f"the most common, {setup or 'untagged'}, is paired"]
    runs, _ = pick_newest(runs[runs.setup == setup], by=("variant", "keep"))
    if args.ecomp_macs:
        print("\n".join(ecomp_overrides(runs, args.ecomp_macs)))
        return
    print(markdown(budget_table(runs), ecomp_table(runs), notes))


if __name__ == "__main__":
    main()
