"""What a sweep's MLflow parent run shows of its jobs: per-scenario means and stds over seeds.

:func:`summarise_sweep` reads the FINISHED runs under a sweep's parent run
(:mod:`ecomp.app.sweep_runs`) and logs on that parent, replacing what an earlier call logged:

* metrics ``<scenario>/<key>_mean`` and ``<scenario>/<key>_std`` (sample std, ddof=1; none for one
  seed) of each of :data:`SUMMARY_KEYS`, and ``<scenario>/n_runs``;
* ``sweep_summary.md``, the same table in markdown;
* ``sweep_summary.json``, an MLflow table (the Artifacts tab shows it as a table;
  ``MlflowClient.load_table`` reads it).

A run's *scenario* is its name without its seed: ``121`` (EComp's fitness weights, with its
levers if any), ``l1_prune-keep0.5`` (a baseline and its settings). Where one scenario has several
FINISHED runs of one seed (a key the name does not show was swept), the newest is counted, as the
reports do. Called when a sweep ends (:class:`ecomp.app.callbacks.SweepSetup`) and by
``experiments/figures.py``, so a resumed sweep, or a report drawn later, updates the same run.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

from ecomp.app.sweep_runs import KIND, KIND_TAG

# (summary key, the child run's metric): the returned network's test accuracy and sizes, and the
# population's mean similarity loss at the last generation (a metric's latest value is its last step's)
SUMMARY_KEYS = (("best_test_accuracy", "best_test_accuracy"), ("best_compression", "best_compression"),
                ("best_params_ratio", "best_params_ratio"), ("best_macs_ratio", "best_macs_ratio"),
                ("final_pop_similarity", "similarity_mean"))
TABLE, MARKDOWN = "sweep_summary.json", "sweep_summary.md"


def scenario_of(run) -> str:
    """The run's name without its ``-seed<k>`` suffix."""
    return run.info.run_name.removesuffix(f"-seed{run.data.tags.get('seed', '')}")


def children(client, experiment_id: str, parent_id: str) -> list:
    """Every run under ``parent_id``, newest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def summary_rows(runs: list) -> tuple[list[dict], list[str]]:
    """One row per scenario (sorted): ``scenario``, ``n_runs``, ``seeds`` and ``<key>_mean``/``_std``
    of :data:`SUMMARY_KEYS` over the newest FINISHED run of each seed of ``runs`` (newest first);
    and the notes (runs left out)."""
    newest: dict[tuple[str, str], object] = {}
    notes = []
    for run in runs:
        if run.info.status != "FINISHED" or "seed" not in run.data.tags:
            continue
        cell = (scenario_of(run), run.data.tags["seed"])
        if cell in newest:
            notes.append(f"{cell[0]}-seed{cell[1]}: an older FINISHED run ({run.info.run_id}) is left out")
        else:
            newest[cell] = run
    unfinished = sum(r.info.status != "FINISHED" for r in runs)
    if unfinished:
        notes.append(f"{unfinished} run(s) of the sweep not FINISHED, left out")
    rows = []
    for scenario in sorted({s for s, _ in newest}):
        cell = [r for (s, _), r in newest.items() if s == scenario]
        row = {"scenario": scenario, "n_runs": len(cell),
               "seeds": ",".join(sorted((r.data.tags["seed"] for r in cell), key=int))}
        for key, metric in SUMMARY_KEYS:
            values = [r.data.metrics[metric] for r in cell if not math.isnan(r.data.metrics.get(metric, math.nan))]
            row[f"{key}_mean"] = statistics.fmean(values) if values else math.nan
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
        rows.append(row)
    return rows, notes


def summary_markdown(rows: list[dict], notes: list[str]) -> str:
    """The table as ``mean ± std`` cells, then what it is and the notes."""
    head = ["scenario", "runs", "seeds", *(key.replace("_", " ") for key, _ in SUMMARY_KEYS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["scenario"], str(row["n_runs"]), row["seeds"]]
        for key, _ in SUMMARY_KEYS:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            cells.append("" if math.isnan(mean) else f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± std (ddof=1) over seeds of the sweep's FINISHED runs. Scenario = the run's name without "
              "its seed. best = the returned network (test accuracy; size relative to the parent's in units, "
              "parameters, MACs); final pop similarity = the population's mean similarity loss at the last "
              "generation (EComp only)."]
    lines += [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"


def summarise_sweep(client, run_id: str) -> list[dict]:
    """Log the summary of the sweep whose parent run is ``run_id`` on it; returns its rows. Nothing
    is logged (and no row returned) when no run under it is FINISHED, or when ``run_id`` is no
    sweep's parent run (tag ``ecomp.kind=sweep``; an Optuna study's parent run, say)."""
    from mlflow.entities import Metric

    parent = client.get_run(run_id)
    if parent.data.tags.get(KIND_TAG) != KIND:
        return []
    rows, notes = summary_rows(children(client, parent.info.experiment_id, run_id))
    if not rows:
        return rows
    ts = int(time.time() * 1000)
    metrics = [Metric(f"{row['scenario']}/n_runs", float(row["n_runs"]), ts, 0) for row in rows]
    metrics += [Metric(f"{row['scenario']}/{key}", float(value), ts, 0) for row in rows
                for key, value in row.items() if key.endswith(("_mean", "_std")) and not math.isnan(value)]
    for s in range(0, len(metrics), 1000):                      # MLflow's limit for one log_batch call
        client.log_batch(run_id, metrics=metrics[s:s + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MARKDOWN).write_text(summary_markdown(rows, notes))
        client.log_artifact(run_id, str(Path(tmp) / MARKDOWN))
        _log_table(client, run_id, rows, Path(tmp))
    return rows


def _log_table(client, run_id: str, rows: list[dict], tmp: Path) -> None:
    """``rows`` as the run's :data:`TABLE`. ``log_table`` appends to a table the run has already,
    so a later summary is written over it instead, in the format ``log_table`` writes (pandas'
    ``orient="split"`` JSON, which ``load_table`` reads)."""
    import pandas as pd

    # text columns as object dtype: MLflow looks for images among the object columns, and pandas 3
    # warns when that look includes its own string dtype
    table = pd.DataFrame(rows).astype({"scenario": object, "seeds": object})
    if not any(f.path == TABLE for f in client.list_artifacts(run_id)):
        client.log_table(run_id, data=table, artifact_file=TABLE)
        return
    (tmp / TABLE).write_text(table.to_json(orient="split", index=False))
    client.log_artifact(run_id, str(tmp / TABLE))
