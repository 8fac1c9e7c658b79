"""Is evolution worth it? EComp's returned networks against the baselines' accuracy-vs-size frontiers.

No MLflow and no plotting here: the input is :func:`report_data.load_all_runs`'s table
(one row per run, newest per cell). :func:`frontier_table` gives each baseline's mean
test accuracy per kept fraction with a 95 % confidence interval over seeds;
:func:`verdict_table` compares each EComp variant with each baseline at the same size.

How a comparison is made. EComp run ``k`` (seed ``k``) returned a network of relative size
``s_k``; the baseline's run of the same seed saw the same training subset, and its accuracy
at ``s_k`` is read off that seed's frontier by linear interpolation between the two nearest
kept fractions. The difference EComp minus baseline is paired by seed; its mean gets a
bootstrap 95 % confidence interval (scipy.stats.bootstrap, BCa, 9,999 resamples, fixed
seed). Sizes outside a baseline's measured range are not extrapolated: that pair is left out,
and the row's sizes and accuracies are means over the pairs kept. Fewer than ``MIN_PAIRS``
pairs give no interval and no reading.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9_999
MIN_PAIRS = 8          # fewer paired seeds: no interval, no reading (a bootstrap of fewer under-covers)
SIZE, ACCURACY = "best_compression", "best_test_accuracy"


def mean_ci(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval of the mean (the band of the frontier lines)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    sem = stats.sem(v)
    if sem == 0:                       # identical values (a deterministic method): a zero-width band
        return m, m, m
    low, high = stats.t.interval(confidence, len(v) - 1, loc=m, scale=sem)
    return m, float(low), float(high)


def bootstrap_ci(diffs: np.ndarray, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """BCa bootstrap interval of the mean of paired differences (zero width if they are all equal)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # BCa on a few distinct values
        res = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                              method="BCa", rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined (e.g. one odd value): percentile
        res = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                              method="percentile", rng=np.random.default_rng(seed))
        low, high = res.confidence_interval
    return float(low), float(high)


def split_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(ecomp, baselines)``: EComp runs (fine-tuned or not) and runs of every other method."""
    is_ecomp = runs.method == "ecomp"
    return runs[is_ecomp].reset_index(drop=True), runs[~is_ecomp & runs.keep.notna()].reset_index(drop=True)


def frontier_table(baselines: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, keep): n_seeds, mean size, mean test accuracy and its 95 % interval, mean validation accuracy."""
    rows = []
    for (variant, keep), g in baselines.groupby(["variant", "keep"], sort=True):
        m, low, high = mean_ci(g[ACCURACY].to_numpy())
        rows.append({"variant": variant, "keep": keep, "n_seeds": len(g), "size_mean": g[SIZE].mean(),
                     "test_accuracy_mean": m, "ci_low": low, "ci_high": high,
                     "val_accuracy_mean": g["best_val_accuracy"].mean()})
    return pd.DataFrame(rows, columns=["variant", "keep", "n_seeds", "size_mean", "test_accuracy_mean",
                                       "ci_low", "ci_high", "val_accuracy_mean"])


def accuracy_at(curve: pd.DataFrame, size: float) -> float:
    """Linear interpolation of one seed's frontier (columns SIZE, ACCURACY) at ``size``; NaN outside it."""
    c = curve.sort_values(SIZE)
    x, y = c[SIZE].to_numpy(), c[ACCURACY].to_numpy()
    if len(x) == 0 or size < x[0] - 1e-12 or size > x[-1] + 1e-12:
        return math.nan
    return float(np.interp(size, x, y))


def compare(ecomp: pd.DataFrame, baseline: pd.DataFrame) -> dict:
    """One EComp variant's runs against one baseline's runs, paired by seed (see the module's docstring).
    Sizes and accuracies are means over the paired runs only, so every column speaks of the same runs."""
    curves = {seed: g for seed, g in baseline.groupby("seed")}
    pairs = [(r[SIZE], r[ACCURACY], accuracy_at(curves[r.seed], r[SIZE]))
             for _, r in ecomp.sort_values("seed").iterrows() if r.seed in curves]   # seed order: reproducible
    pairs = np.array([p for p in pairs if not math.isnan(p[2])]).reshape(-1, 3)
    diffs = pairs[:, 1] - pairs[:, 2]
    low, high = bootstrap_ci(diffs) if len(diffs) >= MIN_PAIRS else (math.nan, math.nan)
    mean = (lambda v: float(v.mean()) if len(v) else math.nan)
    return {"n_pairs": len(diffs), "size_mean": mean(pairs[:, 0]), "ecomp_accuracy": mean(pairs[:, 1]),
            "baseline_accuracy": mean(pairs[:, 2]), "difference": mean(diffs), "ci_low": low, "ci_high": high}


def points(x: float) -> str:
    """An accuracy difference in points with its sign; two decimals where one would print 0.0."""
    return f"{100 * x:+.1f}" if abs(100 * x) >= 0.05 or x == 0 else f"{100 * x:+.2f}"


def reading(variant: str, baseline: str, n_runs: int, row: dict) -> str:
    """The comparison in words, in accuracy points (1 point = 0.01 test accuracy)."""
    n, d, low, high, size = row["n_pairs"], row["difference"], row["ci_low"], row["ci_high"], row["size_mean"]
    if n < MIN_PAIRS or math.isnan(low):
        return (f"too few seeds paired inside {baseline}'s measured sizes to say "
                f"({n} of {n_runs}; at least {MIN_PAIRS} needed)")
    ci = f"95 % CI {points(low)} to {points(high)}"
    if n < n_runs:
        ci += f"; {n} of {n_runs} runs inside {baseline}'s sizes"
    if low > 0:
        return f"EComp {variant} beats {baseline} at size {size:.2f} by {points(d)[1:]} points ({ci})"
    if high < 0:
        return f"{baseline} beats EComp {variant} at size {size:.2f} by {points(-d)[1:]} points ({ci})"
    return f"no clear difference between EComp {variant} and {baseline} at size {size:.2f} ({ci}, includes 0)"


def verdict_table(ecomp: pd.DataFrame, baselines: pd.DataFrame, order: list[str] = ()) -> pd.DataFrame:
    """For each EComp variant (in ``order``, then the rest) x each baseline: sizes, accuracies,
    the paired difference EComp - baseline with its bootstrap 95 % CI, and the reading."""
    variants = [v for v in order if v in set(ecomp.variant)]
    variants += sorted(set(ecomp.variant) - set(variants), key=lambda v: (v.split("+")[0] not in order, v))
    rows = []
    for variant in variants:
        e = ecomp[ecomp.variant == variant]
        for baseline in sorted(baselines.variant.unique()):
            row = compare(e, baselines[baselines.variant == baseline])
            rows.append({"ecomp": variant, "n_runs": len(e), "baseline": baseline, **row,
                         "reading": reading(variant, baseline, len(e), row)})
    return pd.DataFrame(rows, columns=["ecomp", "n_runs", "size_mean", "ecomp_accuracy", "baseline", "n_pairs",
                                       "baseline_accuracy", "difference", "ci_low", "ci_high", "reading"])


def verdict_markdown(table: pd.DataFrame, frontier: pd.DataFrame, parent_accuracy: float, notes: list[str],
                     size: str = "hidden units relative to the parent's") -> str:
    """``verdict.md``: the table in points, then how it was computed."""
    head = ["EComp", "runs", "mean size", "EComp test acc.", "baseline", "pairs", "baseline acc. at that size",
            "EComp - baseline (points)", "95 % CI (points)", "reading"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    def num(x: float, fmt: str) -> str:
        return "" if math.isnan(x) else format(x, fmt)

    for r in table.itertuples(index=False):
        ci = "" if math.isnan(r.ci_low) else f"{points(r.ci_low)} to {points(r.ci_high)}"
        diff = "" if math.isnan(r.difference) else points(r.difference)
        lines.append(f"| {r.ecomp} | {r.n_runs} | {num(r.size_mean, '.3f')} | {num(r.ecomp_accuracy, '.4f')} | "
                     f"{r.baseline} | {r.n_pairs} | {num(r.baseline_accuracy, '.4f')} | {diff} | {ci} | {r.reading} |")
    keeps = ", ".join(f"{k:g}" for k in sorted(frontier.keep.unique())) if len(frontier) else "none"
    lines += ["", "Mean size and accuracies over the runs paired with the baseline (`pairs` of `runs`). "
              f"Size = {size}. Test accuracy on the test images. A baseline's "
              "accuracy at EComp's size is read off its frontier (kept fractions " + keeps + ") for the same seed, "
              "by linear interpolation; the difference is paired by seed and its 95 % CI is a BCa bootstrap of the "
              "mean (scipy.stats.bootstrap). 1 point = 0.01 test accuracy. `+ftN`: EComp's network fine-tuned N "
              "epochs on the run's subset.",
              f"Parent network test accuracy: {parent_accuracy:.4f}."]
    lines += [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"
