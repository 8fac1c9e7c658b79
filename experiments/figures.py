"""Regenerate the paper's Figures 2-5 and its results table from MLflow, in one command.

    python experiments/figures.py
    python experiments/figures.py tracking.uri=sqlite:///path/to/mlflow.db output_dir=reports/run2

Writes into ``output_dir`` (default ``<repo>/reports``), overwriting earlier files:
``fig2_accuracy``, ``fig3_compression``, ``fig4_similarity`` (population means
every third generation, one panel per seed), ``fig5_best_networks`` (box plots
of the returned networks), ``pareto_best_networks`` (beyond the paper), each as
PNG and PDF, and ``summary.csv`` / ``summary.md``. When the store holds baseline
runs: ``frontier`` (PNG, PDF, and ``frontier.csv``: test accuracy vs size of every
baseline with 95 % bands, EComp's networks as points) and ``verdict.csv`` /
``verdict.md`` (experiments/verdict.py). When it holds an Optuna search's trials
(``hydra/sweeper=optuna``): ``search_front`` (PNG, PDF) and ``search_front.csv`` / ``.md``
(experiments/search.py); the trials are kept out of every other figure. When it holds width searches
(``method=random_search|evolve_widths|bee_colony``): ``widths.csv`` / ``widths.md``, each search against
``l1_finetune`` and fine-tuned EComp at equal MACs (experiments/widths_verdict.py). The same files are logged as
artifacts of one run tagged ``ecomp.kind=summary`` in the experiment read, or of the sweep's parent
run when every run read came from one sweep; each sweep whose runs were read gets its per-scenario
summary logged on its parent run again (:mod:`ecomp.app.sweep_summary`).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]   # this script always runs from its checkout
if __package__ in (None, ""):  # `python experiments/figures.py` puts experiments/, not the repo, on sys.path
    sys.path.insert(0, str(REPO))

import hydra
import matplotlib
from omegaconf import MISSING, DictConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ecomp.app.cli import check_overrides, fail  # noqa: E402
from ecomp.app.config import TrackingConf  # noqa: E402
from ecomp.app.store import client_for, default_uri  # noqa: E402
from ecomp.app.sweep_summary import summarise_sweep  # noqa: E402
from ecomp.errors import TrackingError  # noqa: E402
from ecomp.nets.kinds import KINDS  # noqa: E402
from experiments.report_data import (SIZE_COLUMNS, SIZE_LABELS, SUMMARY_TAG, ReportError,  # noqa: E402
                                     grid_gaps, load_all_runs, load_history, paper_runs, pareto_mask, per_run_results, pick_newest, summary_markdown,
                                     summary_table)
from experiments.levers import PAPER, lever_markdown, lever_table, with_levers  # noqa: E402
from experiments.search import SPACE_PARAM, front_markdown, front_table, trial_table  # noqa: E402
from experiments.verdict import frontier_table, split_runs, verdict_markdown, verdict_table  # noqa: E402
from experiments.widths_verdict import widths_files  # noqa: E402

log = logging.getLogger("ecomp.figures")

# (file stem, history column, y label, title) for Figures 2-4
POPULATION_FIGURES = (
    ("fig2_accuracy", "accuracy_mean", "mean accuracy", "Population mean accuracy (higher is better)"),
    ("fig3_compression", "compression_mean", "mean relative size",
     "Population mean size relative to the parent (lower is better)"),
    ("fig4_similarity", "similarity_mean", "mean similarity loss", "Population mean similarity loss (lower is better)"),
)
LEGEND_TITLE = "weights\n(acc, sim, comp)"


@dataclass
class GridConf:
    scenarios: list[str] = MISSING   # the expected scenarios, in legend order
    seeds: list[int] = MISSING


@dataclass
class ReportConf:
    size: str = "units"                   # what the frontier and verdict measure sizes in: units | params | macs
    parent: Optional[str] = None          # mlp | cnn | resnet: whose runs; null = the MLPs (else the first kind) when several are


@dataclass
class FiguresConf:
    tracking: TrackingConf = field(default_factory=TrackingConf)
    report: ReportConf = field(default_factory=ReportConf)
    grid: GridConf = field(default_factory=GridConf)
    output_dir: Optional[str] = None      # default: <repo>/reports
    omit_from_figures: list[str] = field(default_factory=list)
    every: int = 3
    run_filter: Optional[str] = None
    log_summary_run: bool = True


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="figures_schema", node=FiguresConf)


def save(fig, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (no creation date, so reruns give the same PDF) and close ``fig``."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
    return paths


def population_figure(history: pd.DataFrame, column: str, ylabel: str, title: str, order: list[str],
                      palette: dict, every: int):
    """One panel per seed (5 a row), one line per scenario: ``column`` every ``every`` generations."""
    data = history[history.generation % every == 0]
    seeds = sorted(data.seed.unique())
    grid = sns.relplot(data=data, x="generation", y=column, hue="scenario", hue_order=order, palette=palette,
                       col="seed", col_order=seeds, col_wrap=min(5, len(seeds)), kind="line", errorbar=None,
                       height=2.6, aspect=1.15, facet_kws={"sharey": True})
    grid.set_titles("seed {col_name}")
    grid.set_axis_labels("generation", ylabel)
    grid.legend.set_title(LEGEND_TITLE)
    grid.figure.suptitle(f"{title}; every {every} generations", y=1.03)
    return grid.figure


def best_network_figure(results: pd.DataFrame, order: list[str], palette: dict):
    """Box plots over seeds of the returned networks' test accuracy and relative size, per scenario."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, column, label in ((left, "best_test_accuracy", "test accuracy (higher is better)"),
                              (right, "best_compression", "relative size (lower is better)")):
        sns.boxplot(data=results, x="scenario", y=column, hue="scenario", order=order, hue_order=order,
                    palette=palette, legend=False, ax=ax)
        ax.set(xlabel="weights (accuracy, similarity, compression)", ylabel=label)
    parent = results.parent_test_accuracy.mean()
    left.axhline(parent, color="black", linestyle="--", linewidth=1, label=f"parent network ({parent:.3f})")
    left.legend(loc="best")
    fig.tight_layout()
    return fig


def pareto_figure(results: pd.DataFrame, order: list[str], palette: dict):
    """The returned networks in (relative size, test accuracy), one colour per scenario, with the Pareto front."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    sns.scatterplot(data=results, x="best_compression", y="best_test_accuracy", hue="scenario", hue_order=order,
                    palette=palette, s=40, ax=ax)
    front = results[pareto_mask(results.best_compression.to_numpy(), results.best_test_accuracy.to_numpy())]
    front = front.sort_values("best_compression")
    ax.step(front.best_compression, front.best_test_accuracy, where="post", color="black", linewidth=1,
            label="Pareto front")
    ax.axhline(results.parent_test_accuracy.mean(), color="grey", linestyle="--", linewidth=1, label="parent network")
    ax.set(xlabel="relative size of the returned network (lower is smaller)", ylabel="test accuracy")
    ax.legend(title=LEGEND_TITLE, fontsize="small")
    fig.tight_layout()
    return fig


LEVER_MARKERS = ("o", "X", "s", "^", "D", "v", "P", "*")
BASELINE_STYLES = (("black", "-"), ("tab:gray", "--"), ("tab:olive", "-."), ("tab:cyan", ":"),
                   ("darkgoldenrod", "-"), ("slategray", "--"))


def frontier_figure(frontier: pd.DataFrame, ecomp: pd.DataFrame, order: list[str], palette: dict,
                    parent_accuracy: float, zoom: float = 0.1, size_label: str = SIZE_LABELS["units"]):
    """Test accuracy vs relative size: each baseline's mean over seeds with its 95 % band, EComp's
    returned networks as points by scenario (fine-tuned ones as crosses), the parent as a line.
    Left: everything; right: the same, the top ``zoom`` of accuracy below the parent."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4))
    levers = [PAPER] + sorted(set(with_levers(ecomp).lever) - {PAPER})
    markers = {lever: LEVER_MARKERS[i % len(LEVER_MARKERS)] for i, lever in enumerate(levers)}
    variants = sorted(frontier.variant.unique())
    styles = {v: BASELINE_STYLES[i % len(BASELINE_STYLES)] for i, v in enumerate(variants)}
    for ax in axes:
        for variant, f in frontier.groupby("variant", sort=True):
            f = f.sort_values("size_mean")
            colour, dash = styles[variant]
            ax.plot(f.size_mean, f.test_accuracy_mean, color=colour, linestyle=dash, marker=".", linewidth=1.5,
                    label=f"{variant} (mean, 95 % CI)")
            ax.fill_between(f.size_mean, f.ci_low, f.ci_high, color=colour, alpha=0.15, linewidth=0)
        runs = with_levers(ecomp)
        for lever in levers:
            for scenario in [s for s in order if s in set(runs.scenario)]:
                pts = runs[(runs.scenario == scenario) & (runs.lever == lever)]
                ax.scatter(pts.best_compression, pts.best_test_accuracy, color=palette.get(scenario, "grey"),
                           marker=markers[lever], s=24 if lever == PAPER else 34, alpha=0.85,
                           edgecolor="none" if lever == PAPER else "black", linewidth=0.4)
        ax.axhline(parent_accuracy, color="black", linestyle=":", linewidth=1, label=f"parent ({parent_accuracy:.3f})")
        ax.set(xlabel=size_label, ylabel="test accuracy")
    axes[0].set_title("Accuracy vs size: EComp's networks against the baselines")
    axes[1].set_ylim(parent_accuracy - zoom, parent_accuracy + 0.01)
    axes[1].set_title(f"the same, within {zoom:.2f} of the parent")
    handles, labels = axes[0].get_legend_handles_labels()
    for scenario in [s for s in order if s in set(ecomp.scenario)]:
        handles.append(Line2D([], [], color=palette.get(scenario, "grey"), marker="o", linestyle="none"))
        labels.append(f"EComp {scenario}")
    for lever in levers:
        handles.append(Line2D([], [], color="grey", marker=markers[lever], linestyle="none",
                              markeredgecolor="none" if lever == PAPER else "black"))
        labels.append("EComp: the paper's settings" if lever == PAPER else f"EComp {lever}")
    fig.legend(handles, labels, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def lever_figure(ecomp: pd.DataFrame, order: list[str]):
    """Figure 5's axes for every lever: box plots over seeds of the returned networks' test accuracy
    and relative size per scenario, one box per lever (the paper's settings first)."""
    runs = with_levers(ecomp)
    levers = [PAPER] + sorted(set(runs.lever) - {PAPER})
    present = [s for s in order if s in set(runs.scenario)] + sorted(set(runs.scenario) - set(order))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    for ax, column, label in ((left, "best_test_accuracy", "test accuracy (higher is better)"),
                              (right, "best_compression", "relative size (lower is better)")):
        sns.boxplot(data=runs, x="scenario", y=column, hue="lever", order=present, hue_order=levers, ax=ax,
                    palette="Set2", fliersize=2)
        ax.set(xlabel="weights (accuracy, similarity, compression)", ylabel=label)
    left.legend_.remove()
    right.legend(title="lever", fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("What each lever changes in the returned networks (Figure 5's axes)")
    fig.tight_layout()
    return fig


def lever_files(ecomp: pd.DataFrame, order: list[str], out: Path) -> list[Path]:
    """``levers.csv``, ``levers.md`` and ``levers.png/pdf`` when some EComp runs used other settings."""
    if set(with_levers(ecomp).lever) <= {PAPER}:
        return []
    table = lever_table(ecomp, order)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "levers.csv", index=False)
    (out / "levers.md").write_text(lever_markdown(table))
    with sns.axes_style("whitegrid"):
        files = save(lever_figure(ecomp, order), out, "levers")
    return [out / "levers.csv", out / "levers.md", *files]


def make_figures(results: pd.DataFrame, history: pd.DataFrame, out_dir: Path, order: list[str],
                 omit: list[str] = (), every: int = 3) -> list[Path]:
    """Figures 2-5 without the scenarios in ``omit`` (the paper leaves out 001) and the Pareto plot with all."""
    present = [s for s in order if s in set(results.scenario)]
    palette = dict(zip(present, sns.color_palette("tab10", len(present))))
    shown = [s for s in present if s not in omit]
    paths: list[Path] = []
    with sns.axes_style("whitegrid"):
        if shown:
            data = history[history.scenario.isin(shown)]
            for stem, column, ylabel, title in POPULATION_FIGURES:
                paths += save(population_figure(data, column, ylabel, title, shown, palette, every), out_dir, stem)
            paths += save(best_network_figure(results[results.scenario.isin(shown)], shown, palette),
                          out_dir, "fig5_best_networks")
        else:
            log.warning("nothing left for Figures 2-5 after omit_from_figures=%s; drawing the Pareto plot only",
                        list(omit))
        paths += save(pareto_figure(results, present, palette), out_dir, "pareto_best_networks")
    return paths


def log_summary_run(uri: str, experiment: str, files: list[Path], description: str, n_runs: int) -> str:
    """Log ``files`` as artifacts (under ``report/``) of a new FINISHED run tagged ``ecomp.kind=summary``."""
    client = client_for(uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    tags = {SUMMARY_TAG: "summary", "mlflow.note.content": description, "n_runs": str(n_runs)}
    run_id = client.create_run(exp_id, run_name="figures", tags=tags).info.run_id
    status = "FAILED"
    try:
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path="report")
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    return run_id


def log_report_to(uri: str, run_id: str, files: list[Path]) -> None:
    """Log ``files`` under ``report/`` of an existing run (a sweep's parent), whatever its status."""
    client = client_for(uri)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="report")


def build_report(cfg: DictConfig) -> list[Path]:
    """Read the store, write every figure and table, log them; returns the files written."""
    uri = cfg.tracking.uri or default_uri(REPO)
    size, kind = cfg.report.size, cfg.report.parent
    if size not in SIZE_COLUMNS:
        raise ReportError(f"report.size={size!r}: one of {', '.join(SIZE_COLUMNS)}")
    if kind not in (None, *KINDS):
        raise ReportError(f"report.parent={kind!r}: null (the MLPs, or the first kind, when several are in the store) or one of "
                          f"{', '.join(KINDS)}")
    scenarios, seeds = [str(s) for s in cfg.grid.scenarios], [int(k) for k in cfg.grid.seeds]
    everything = load_all_runs(uri, cfg.tracking.experiment, cfg.run_filter, cfg.tracking.timeout_s)
    kinds = set(everything.parent_kind)
    notes: list[str] = []
    if kind is None and len(kinds) > 1:       # runs of different kinds are never paired, nor drawn together
        kind = "mlp" if "mlp" in kinds else sorted(kinds)[0]
        others = ", ".join(f"report.parent={k}" for k in sorted(kinds - {kind}))
        notes.append(f"the store holds runs of {', '.join(sorted(kinds))} parents: this report is of the {kind} "
                     f"runs ({others} for the others)")
    if kind is not None:
        if kind not in kinds:
            raise ReportError(f"report.parent={kind}: no FINISHED runs of a {kind} parent in {uri} "
                              f"(found: {', '.join(sorted(kinds))})")
        everything = everything[everything.parent_kind == kind]
    if size != "units":                       # the frontier and verdict read best_compression as the size
        measured = everything[SIZE_COLUMNS[size]].notna()
        if not measured.all():
            notes.append(f"{int((~measured).sum())} runs logged before {SIZE_COLUMNS[size]} existed are left out")
        everything = everything[measured].assign(best_compression=everything[SIZE_COLUMNS[size]])
    trials, everything = everything[everything.study != ""], everything[everything.study == ""]   # searches apart
    out = Path(cfg.output_dir) if cfg.output_dir else REPO / "reports"
    files: list[Path] = []
    runs = paper_runs(everything)
    if runs.empty:
        notes.append("no EComp runs of the paper's configuration: Figures 2-5 and summary.* are not drawn")
    else:
        runs, newest_notes = pick_newest(runs)
        notes += newest_notes
        missing, outside = grid_gaps(runs, scenarios, seeds)
        if outside:
            notes.append(f"left out {len(outside)} runs outside the grid: {', '.join(outside)}")
        runs = runs[runs.scenario.isin(scenarios) & runs.seed.isin(seeds)]
        if runs.empty:
            raise ReportError(f"none of the FINISHED runs in {uri} is in the grid (grid.scenarios={scenarios}, "
                              f"grid.seeds={seeds}; found {', '.join(outside)})")
        history = load_history(uri, runs)
        results = per_run_results(runs, history)
        table = summary_table(results, scenarios)
        markdown = summary_markdown(table, results.parent_test_accuracy.mean(), missing, notes)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "summary.csv", index=False)
        (out / "summary.md").write_text(markdown)
        files += [out / "summary.csv", out / "summary.md"]
        files += make_figures(results, history, out, scenarios, list(cfg.omit_from_figures), cfg.every)
        if missing:
            log.warning("missing from the grid (%d of %d): %s", len(missing), len(scenarios) * len(seeds),
                        ", ".join(missing))
    paired = one_setup(everything, notes)
    files += verdict_files(paired, scenarios, out, notes, SIZE_LABELS[size])
    files += widths_files(paired, out)
    files += search_files(uri, cfg.tracking.experiment, trials, everything, scenarios, out, notes)
    for note in notes:
        log.warning(note)
    if cfg.log_summary_run:
        parents = set(everything.parent_run) if "parent_run" in everything else set()
        client = client_for(uri)
        for parent in sorted(parents - {""}):         # each sweep's per-scenario summary, on its run
            if summarise_sweep(client, parent):
                log.info("logged the summary of sweep run %s", parent)
        if len(parents) == 1 and "" not in parents:        # every run came from one sweep: report there
            (parent,) = parents
            log_report_to(uri, parent, files)
            log.info("logged the report to the sweep's parent run %s", parent)
        else:
            texts = [p.read_text() for p in (out / "verdict.md", out / "widths.md", out / "summary.md") if p in files]
            description = "\n".join(texts) or "frontier of the baselines (no EComp runs)"
            run_id = log_summary_run(uri, cfg.tracking.experiment, files, description, len(everything))
            log.info("logged the report as run %s (tag %s=summary)", run_id, SUMMARY_TAG)
    log.info("%d runs; wrote %d files to %s", len(everything), len(files), out)
    return files


def one_setup(everything: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The runs of the most common data/parent setup: pairing by seed needs the same images and parent."""
    setups = everything.setup.value_counts()
    if len(setups) > 1:
        counts = ", ".join(f"{k or 'untagged'}: {n}" for k, n in setups.items())
        notes.append(f"runs of {len(setups)} data/parent setups ({counts}); the frontier, verdict and width "
                     f"searches' tables use the most common, {setups.index[0] or 'untagged'}")
        everything = everything[everything.setup == setups.index[0]]
    return everything


def verdict_files(everything: pd.DataFrame, order: list[str], out: Path, notes: list[str],
                  size_label: str = SIZE_LABELS["units"]) -> list[Path]:
    """``frontier.*``, ``frontier.csv`` and ``verdict.*`` when ``everything`` (one setup) holds baseline
    runs (else none)."""
    ecomp, baselines = split_runs(everything)
    ecomp, ecomp_notes = pick_newest(ecomp, by=("variant",))
    baselines, newest_notes = pick_newest(baselines, by=("variant", "keep"))
    paper_variants = set(paper_runs(everything).variant)                   # noted with the paper's grid
    newest_notes += [n for n in ecomp_notes if n.split("-seed")[0] not in paper_variants]
    if baselines.empty:
        notes.append("no baseline runs (method=l1_prune, l1_finetune, scratch, distill): no frontier or verdict")
        return []
    notes += newest_notes
    frontier = frontier_table(baselines)
    parent = float(everything.parent_test_accuracy.mean())
    out.mkdir(parents=True, exist_ok=True)
    frontier.to_csv(out / "frontier.csv", index=False)
    files = [out / "frontier.csv"]
    present = [s for s in order if s in set(ecomp.scenario)] + sorted(set(ecomp.scenario) - set(order))
    palette = dict(zip(present, sns.color_palette("tab10", len(present))))
    with sns.axes_style("whitegrid"):
        files += save(frontier_figure(frontier, ecomp, present, palette, parent, size_label=size_label), out,
                      "frontier")
    if ecomp.empty:
        notes.append("no EComp runs: the frontier has no points and there is no verdict")
        return files
    files += lever_files(ecomp, order, out)
    table = verdict_table(ecomp, baselines, order)
    table.to_csv(out / "verdict.csv", index=False)
    (out / "verdict.md").write_text(verdict_markdown(table, frontier, parent, notes, size_label))
    return files + [out / "verdict.csv", out / "verdict.md"]


def search_settings(uri: str, experiment: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
    """``{run_id: {searched key: value}}``: the keys each run's study searched (its parent run's
    ``search.space.*`` params), read from the run's params (every run logs its config)."""
    client = client_for(uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    spaces = {p.data.tags["optuna_study"]: [k[len(SPACE_PARAM):] for k in p.data.params if k.startswith(SPACE_PARAM)]
              for p in client.search_runs([exp_id], "tags.optuna_role = 'study'", max_results=1000)}
    out = {}
    for run_id in run_ids:
        run = client.get_run(run_id)
        keys = spaces.get(run.data.tags.get("optuna_study"), [])
        out[run_id] = {k: run.data.params.get(k, "") for k in keys}
    return out


def search_figure(table: pd.DataFrame, front: pd.DataFrame, frontier: pd.DataFrame, paper: pd.DataFrame,
                  order: list[str], palette: dict, parent_accuracy: float):
    """Left: every trial in (size, validation accuracy), each study's front joined. Right: the frontier's
    axes (test accuracy vs size): the baselines' means with 95 % bands, the paper's seven scenarios (mean
    over seeds, with the seeds' range), and the search's front at its test accuracy."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4))
    studies = sorted(table.study.unique())
    colours = dict(zip(studies, sns.color_palette("dark", len(studies))))
    searched = front[front.kind == "search front"]
    for study in studies:
        t, f = table[table.study == study], searched[searched.study == study].sort_values("size")
        left.scatter(t.best_compression, t.best_val_accuracy, color="lightgrey", s=18, label=f"trials ({len(t)})")
        left.step(f["size"], f.val_accuracy, where="post", color=colours[study], marker="*", markersize=9,
                  label=f"front of {study}")
        right.plot(f["size"], f.test_accuracy, color=colours[study], marker="*", markersize=11, linewidth=1.5,
                   label=f"search front {study} (test)")
    left.set(xlabel="relative size (hidden units / parent's)", ylabel="validation accuracy",
             title="The search's trials and its Pareto front (validation)")
    left.legend(fontsize="small")
    variants = sorted(frontier.variant.unique())
    styles = {v: BASELINE_STYLES[i % len(BASELINE_STYLES)] for i, v in enumerate(variants)}
    for variant, f in frontier.groupby("variant", sort=True):
        f = f.sort_values("size_mean")
        colour, dash = styles[variant]
        right.plot(f.size_mean, f.test_accuracy_mean, color=colour, linestyle=dash, linewidth=1.2,
                   label=f"{variant} (mean, 95 % CI)")
        right.fill_between(f.size_mean, f.ci_low, f.ci_high, color=colour, alpha=0.12, linewidth=0)
    for scenario in [s for s in order if s in set(paper.scenario)]:
        p = paper[paper.scenario == scenario]
        right.errorbar(p.best_compression.mean(), p.best_test_accuracy.mean(), fmt="o", markersize=7,
                       color=palette.get(scenario, "grey"),
                       xerr=[[p.best_compression.mean() - p.best_compression.min()],
                             [p.best_compression.max() - p.best_compression.mean()]],
                       yerr=[[p.best_test_accuracy.mean() - p.best_test_accuracy.min()],
                             [p.best_test_accuracy.max() - p.best_test_accuracy.mean()]],
                       elinewidth=0.7, capsize=2, label=f"paper {scenario} ({len(p)} seeds)")
    right.axhline(parent_accuracy, color="black", linestyle=":", linewidth=1, label=f"parent ({parent_accuracy:.3f})")
    right.set(xlabel="relative size (hidden units / parent's)", ylabel="test accuracy",
              title="The front against the paper's scenarios and the baselines")
    right.set_ylim(max(0.0, min(searched.test_accuracy.min(), parent_accuracy) - 0.15), parent_accuracy + 0.02)
    right.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def search_files(uri: str, experiment: str, trials: pd.DataFrame, everything: pd.DataFrame, order: list[str],
                 out: Path, notes: list[str]) -> list[Path]:
    """``search_front.png/pdf/csv/md`` when the store holds an Optuna search's trials (else none)."""
    if trials.empty:
        return []
    setups = trials.setup.value_counts()
    if len(setups) > 1:
        notes.append(f"search trials of {len(setups)} data/parent setups; the search front uses the most common")
    setup = setups.index[0]
    trials, others = trials[trials.setup == setup], everything[everything.setup == setup]
    ecomp, baselines = split_runs(others)
    paper, _ = pick_newest(paper_runs(others))
    frontier = frontier_table(pick_newest(baselines, by=("variant", "keep"))[0])
    reference = trial_table(paper[paper.scenario == "121"].assign(study="", trial="-1")).assign(run_id="")
    table = trial_table(trials)
    settings = search_settings(uri, experiment, list(table.run_id))
    front = front_table(trials, settings, frontier, reference)
    parent = float(trials.parent_test_accuracy.mean())
    out.mkdir(parents=True, exist_ok=True)
    front.to_csv(out / "search_front.csv", index=False)
    (out / "search_front.md").write_text(front_markdown(front, table.study.value_counts().to_dict(), parent))
    palette = dict(zip(order, sns.color_palette("tab10", len(order))))
    with sns.axes_style("whitegrid"):
        files = save(search_figure(table, front, frontier, paper, order, palette, parent), out, "search_front")
    return [out / "search_front.csv", out / "search_front.md", *files]


@hydra.main(version_base="1.3", config_path="../conf", config_name="figures")
def main(cfg: DictConfig) -> None:
    from mlflow.exceptions import MlflowException

    try:
        build_report(cfg)
    except (ReportError, TrackingError, OSError, MlflowException) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


if __name__ == "__main__":
    register_configs()
    sys.argv[1:] = check_overrides(sys.argv[1:])
    main()
