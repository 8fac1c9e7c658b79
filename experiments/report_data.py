"""From an MLflow experiment to the tables behind the paper's figures.

No Hydra and no plotting here: :func:`load_runs` reads the FINISHED runs,
:func:`pick_newest` keeps one run per (scenario, seed), :func:`load_history`
reads the per-generation population means, :func:`summary_table` makes the
results table. Every failure to find data raises :class:`ReportError` with a
one-line message.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ecomp.app.reachable import check_reachable
from ecomp.app.config import HASH_NEUTRAL
from ecomp.app.store import (TAG_HASH, TAG_KEEP, TAG_METHOD, TAG_SCENARIO, TAG_SEED, TAG_SWEEP, TAG_VARIANT,
                             client_for)

SUMMARY_TAG = "ecomp.kind"             # runs tagged ecomp.kind=summary hold reports, not data
TAG_STUDY, TAG_TRIAL = "optuna_study", "optuna_trial"   # a search's trial (hydra/sweeper=optuna)
HISTORY_KEYS = ("accuracy_mean", "compression_mean", "similarity_mean")
FINAL_KEYS = ("best_test_accuracy", "best_compression", "best_hidden_units", "parent_test_accuracy")
# logged by every method since the baselines came (NaN for older runs)
METHOD_KEYS = ("best_val_accuracy", "best_params_ratio", "run_seconds")
# logged by the width searches (NaN for every other method)
SEARCH_KEYS = ("search_seconds", "finetune_seconds")
# logged since CNNs came (NaN for older runs; every older run is an MLP)
COST_KEYS = ("best_macs_ratio", "parent_macs", "best_latency_ms", "parent_latency_ms")
# report.size -> the column holding each returned network's size relative to its parent's
SIZE_COLUMNS = {"units": "best_compression", "params": "best_params_ratio", "macs": "best_macs_ratio"}
SIZE_LABELS = {"units": "prunable units relative to the parent's", "params": "parameters relative to the parent's",
               "macs": "multiply-accumulates relative to the parent's"}
CONVERGENCE_TOL = 0.01
# summary.csv columns: (column stem, source column); each gives <stem>_mean and <stem>_sd
SUMMARY_COLUMNS = (
    ("final_pop_accuracy", "accuracy_mean"),
    ("final_pop_compression", "compression_mean"),
    ("final_pop_similarity", "similarity_mean"),
    ("best_test_accuracy", "best_test_accuracy"),
    ("best_compression", "best_compression"),
    ("convergence_generation", "convergence_generation"),
)


class ReportError(RuntimeError):
    """There is nothing to report on; the message is one line."""


def open_store(uri: str, timeout: float):
    """An MLflow client for ``uri``, after checking the store exists (a sqlite file is never created)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ReportError(f"tracking.uri={uri!r}: no MLflow store at {path} (run `python run.py` first)")
    else:
        check_reachable(uri, timeout)   # TrackingError for a dead server or a file store
    return client_for(uri)


def _experiment_id(client, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"tracking.experiment={name!r} not found in {uri} "
                          f"(experiments there: {', '.join(names) or 'none'})")
    return exp.experiment_id


def _search(client, exp_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_all_runs(uri: str, experiment: str, run_filter: str | None = None, timeout: float = 10.0) -> pd.DataFrame:
    """One row per FINISHED data run of ``experiment``, every method, duplicates included, newest first.

    Columns: run_id, method, variant, setup, scenario, keep, macs, score, epochs, lr (a method's labels,
    "" or NaN where it has none or keeps the default), finetune_epochs, seed, start_time,
    config_hash, sweep, parent_run (its sweep's MLflow parent run, else ""), study and trial (an
    Optuna search's, else "") and the final metrics in :data:`FINAL_KEYS`, :data:`METHOD_KEYS`, :data:`SEARCH_KEYS` and :data:`COST_KEYS`.
    ``variant`` names what a line or point of the frontier stands for: an EComp scenario
    (``121``, ``121+ft1`` when fine-tuned), or a baseline with its non-default settings
    (``l1_finetune``, ``l1_prune (importance=taylor)``); ``setup`` hashes the data and parent
    params (:func:`setup_of`). Runs logged before methods
    existed have no ``method`` tag and count as EComp. Summary runs (tag ``ecomp.kind``) and
    runs without a seed are left out. ``run_filter`` is an extra MLflow search filter, e.g.
    ``tags.sweep = 'multirun/2025-01-01/12-00-00'``.
    """
    from mlflow.exceptions import MlflowException

    client = open_store(uri, timeout)
    try:
        exp_id = _experiment_id(client, uri, experiment)
        extra = f" and {run_filter}" if run_filter else ""
        finished = _search(client, exp_id, "attributes.status = 'FINISHED'" + extra)
        rows = [_row(r) for r in finished if SUMMARY_TAG not in r.data.tags
                and r.data.tags.get(TAG_SEED, "").lstrip("-").isdigit()
                and (TAG_SCENARIO in r.data.tags or TAG_METHOD in r.data.tags)]
        if not rows:
            others = _search(client, exp_id, run_filter or "")
            states = pd.Series([r.info.status for r in others], dtype=object).value_counts()
            found = ", ".join(f"{n} {s}" for s, n in states.items()) or "no runs"
            raise ReportError(f"no FINISHED runs in experiment {experiment!r} at {uri}"
                              f"{' matching ' + repr(run_filter) if run_filter else ''} ({found})")
    except MlflowException as exc:
        raise ReportError(f"tracking.uri={uri!r}: {str(exc).splitlines()[0]}") from None
    return pd.DataFrame(rows).sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True)


def _row(r) -> dict:
    tags = r.data.tags
    method = tags.get(TAG_METHOD, "ecomp")
    finetune = int(tags.get("finetune_epochs", 0))
    variant = tags.get(TAG_VARIANT)
    if variant is None:                       # logged before runs carried their variant
        if method == "ecomp":
            variant = tags.get(TAG_SCENARIO, "?") + (f"+ft{finetune}" if finetune else "")
        else:
            importance = tags.get("importance", "l1")
            variant = method + ("" if importance == "l1" else f" (importance={importance})")
    return {"run_id": r.info.run_id, "method": method, "variant": variant, "setup": setup_of(r.data.params),
            "base": base_of(r.data.params),
            "scenario": tags.get(TAG_SCENARIO), "keep": float(tags.get(TAG_KEEP, "nan")),
            "macs": float(tags.get("macs", "nan")), "score": tags.get("score", ""),
            "epochs": tags.get("epochs", ""), "lr": tags.get("lr", ""), "finetune_epochs": finetune, "seed": int(tags[TAG_SEED]),
            "start_time": pd.Timestamp(r.info.start_time, unit="ms"),
            "config_hash": tags.get(TAG_HASH, ""), "sweep": tags.get(TAG_SWEEP, ""),
            "study": tags.get(TAG_STUDY, ""), "trial": tags.get(TAG_TRIAL, ""),
            "parent_run": tags.get("mlflow.parentRunId", ""),
            "parent_kind": r.data.params.get("parent.kind", "mlp"),
            **{k: _metric(r.data.metrics, k) for k in (*FINAL_KEYS, *METHOD_KEYS, *SEARCH_KEYS, *COST_KEYS)}}


# Metrics renamed since runs were first recorded: new name -> old name.
RENAMED = {"best_params_ratio": "best_relative_parameters"}


def _metric(metrics: dict[str, float], key: str) -> float:
    return metrics.get(key, metrics.get(RENAMED.get(key, ""), math.nan))


# Params of the data and parent groups that do not change which images a run sees, or its parent.
SETUP_IGNORED = ("data.root", "data.download", "parent.cache_dir")


def setup_of(params: dict[str, str]) -> str:
    """A short hash of a run's data and parent settings (its ``data.*`` and ``parent.*`` params):
    runs of the same setup and seed saw the same training subset, validation and test images and
    the same parent, so they can be paired."""
    return _params_hash(params, lambda k: k.startswith(("data.", "parent.")) and k not in SETUP_IGNORED)


# Params a lever may change, and those that do not shape a run's numbers.
LEVER_PARAMS = ("operators.selection.", "fitness.compression", "similarity._target_", "similarity.perplexity", "similarity.tol",
                "similarity.kernels", "method.", "tracking.", "seed", "threads", "progress")


def base_of(params: dict[str, str]) -> str:
    """A short hash of a run's params without its levers: runs of one scenario and seed with the same
    base differ only in their levers, so the report may credit the difference to the lever."""
    return _params_hash(params, lambda k: not k.startswith(LEVER_PARAMS))


# Params added after runs were first recorded, at the value that behaves as before (the config
# hash's own list, ecomp.app.config.HASH_NEUTRAL, as logged): left out, so old and new runs of one
# setup still pair.
NEUTRAL_PARAMS = {f"{group}.{key}": str(value) for (group, key), value in HASH_NEUTRAL.items()}


def _params_hash(params: dict[str, str], keep) -> str:
    """A short hash of the params whose keys ``keep`` accepts ("" when there are none)."""
    items = sorted((k, v) for k, v in params.items() if keep(k) and NEUTRAL_PARAMS.get(k) != v)
    return hashlib.sha256(repr(items).encode()).hexdigest()[:12] if items else ""


def paper_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the paper's experiment: EComp with the paper's operators and similarity, not fine-tuned."""
    paper = (runs.method == "ecomp") & (runs.finetune_epochs == 0) & (runs.variant == runs.scenario)
    return runs[paper].reset_index(drop=True)


def load_runs(uri: str, experiment: str, run_filter: str | None = None, timeout: float = 10.0) -> pd.DataFrame:
    """:func:`load_all_runs` restricted to :func:`paper_runs`; :class:`ReportError` if there are none."""
    runs = paper_runs(load_all_runs(uri, experiment, run_filter, timeout))
    if runs.empty:
        raise ReportError(f"no FINISHED EComp runs (method=ecomp, not fine-tuned) in experiment {experiment!r} "
                          f"at {uri}{' matching ' + repr(run_filter) if run_filter else ''}")
    return runs


def pick_newest(runs: pd.DataFrame, by: tuple[str, ...] = ("scenario",)) -> tuple[pd.DataFrame, list[str]]:
    """Keep the newest run of each (``by``..., seed); the notes say which cells had several."""
    runs = runs.sort_values("start_time", ascending=False, kind="stable")
    notes = []
    key = [*by, "seed"]
    for cell, group in runs.groupby(key, sort=True, dropna=False):
        *labels, seed = cell
        scenario = "-".join(f"{v:g}" if isinstance(v, float) else str(v) for v in labels)
        if len(group) > 1:
            newest = group.iloc[0]
            hashes = group.config_hash.unique()
            same = "the same config" if len(hashes) == 1 else f"different configs ({', '.join(hashes)})"
            notes.append(f"{scenario}-seed{seed}: {len(group)} FINISHED runs with {same}; "
                         f"using the newest, {newest.run_id} started {newest.start_time:%Y-%m-%d %H:%M:%S}")
    return runs.drop_duplicates(key).reset_index(drop=True), notes


def grid_gaps(runs: pd.DataFrame, scenarios: list[str], seeds: list[int]) -> tuple[list[str], list[str]]:
    """``(missing, outside)``: grid cells with no run, and runs' ``scenario-seed`` names outside the grid."""
    have = set(zip(runs.scenario, runs.seed))
    missing = [f"{s}-seed{k}" for s in scenarios for k in seeds if (s, k) not in have]
    inside = runs.scenario.isin(scenarios) & runs.seed.isin(seeds)
    outside = [f"{s}-seed{k}" for s, k in zip(runs.scenario[~inside], runs.seed[~inside])]
    return missing, outside


def load_history(uri: str, runs: pd.DataFrame, keys: tuple[str, ...] = HISTORY_KEYS) -> pd.DataFrame:
    """Per-generation metrics of ``runs``: columns run_id, scenario, seed, generation and ``keys``."""
    client = client_for(uri)
    frames = []
    for run in runs.itertuples():
        for key in keys:
            points = client.get_metric_history(run.run_id, key)
            frames.append(pd.DataFrame({"run_id": run.run_id, "key": key,
                                        "generation": [m.step for m in points],
                                        "timestamp": [m.timestamp for m in points],
                                        "value": [m.value for m in points]}))
    long = pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable")
    wide = long.pivot_table(index=["run_id", "generation"], columns="key", values="value", aggfunc="last")
    wide = wide.reindex(columns=list(keys)).reset_index()
    wide.columns.name = None
    return runs[["run_id", "scenario", "seed"]].merge(wide, on="run_id").sort_values(
        ["scenario", "seed", "generation"], kind="stable").reset_index(drop=True)


def convergence_generation(generations: np.ndarray, accuracy: np.ndarray, tol: float = CONVERGENCE_TOL) -> int:
    """The first generation g with ``|accuracy(g) - final| <= tol * final``.

    ``final`` is the population mean accuracy at the last generation; ``tol=0.01``
    is "within 1 % of its final value". It is the first entry into that band,
    even if the curve leaves it again later.
    """
    order = np.argsort(generations)
    gens, acc = np.asarray(generations)[order], np.asarray(accuracy)[order]
    close = np.abs(acc - acc[-1]) <= tol * abs(acc[-1])
    return int(gens[np.argmax(close)])


def per_run_results(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """``runs`` plus the last generation's population means and the convergence generation."""
    last = history.sort_values("generation").groupby("run_id").tail(1).set_index("run_id")[list(HISTORY_KEYS)]
    conv = {rid: convergence_generation(h.generation.to_numpy(), h.accuracy_mean.to_numpy())
            for rid, h in history.dropna(subset=["accuracy_mean"]).groupby("run_id")}
    out = runs.join(last, on="run_id")
    out["convergence_generation"] = out.run_id.map(conv).astype(float)
    return out


def summary_table(results: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per scenario (in ``order``): n_runs and mean and sd (ddof=1) over runs of each of :data:`SUMMARY_COLUMNS`."""
    groups = results.groupby("scenario")
    table = pd.DataFrame({"n_runs": groups.size()})
    for stem, column in SUMMARY_COLUMNS:
        table[f"{stem}_mean"] = groups[column].mean()
        table[f"{stem}_sd"] = groups[column].std(ddof=1)
    present = [s for s in order if s in table.index] + sorted(set(table.index) - set(order))
    return table.loc[present].rename_axis("scenario").reset_index()


def summary_markdown(table: pd.DataFrame, parent_accuracy: float, missing: list[str], notes: list[str]) -> str:
    """``summary.md``: the table as ``mean ± sd`` cells, then the parent's accuracy, gaps and notes."""
    head = ["scenario", "n runs"] + [stem.replace("_", " ") for stem, _ in SUMMARY_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.itertuples(index=False):
        row = row._asdict()
        cells = [str(row["scenario"]), str(row["n_runs"])]
        for stem, _ in SUMMARY_COLUMNS:
            digits = 1 if stem == "convergence_generation" else 4
            mean, sd = row[f"{stem}_mean"], row[f"{stem}_sd"]
            cells.append(f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Scenario = fitness weights (accuracy, similarity, compression). Mean ± sd over runs (seeds).",
              "final pop = population mean at the last generation; best = the returned network on the test set;",
              f"convergence generation = first generation whose population mean accuracy is within "
              f"{CONVERGENCE_TOL:.0%} of its final value.",
              f"Parent network test accuracy: {parent_accuracy:.4f}.",
              "", f"Missing from the grid ({len(missing)}): {', '.join(missing) or 'none'}."]
    lines += [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"


def pareto_mask(compression: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """True where no other point is at least as small and as accurate, and strictly better in one."""
    c, a = np.asarray(compression)[:, None], np.asarray(accuracy)[:, None]
    dominated = (c.T <= c) & (a.T >= a) & ((c.T < c) | (a.T > a))   # [i, j]: j dominates i
    return ~dominated.any(axis=1)
