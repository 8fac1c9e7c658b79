"""experiments/figures.py on a small real MLflow store with known metric histories."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from PIL import Image

from experiments import figures
from experiments.report_data import ReportError, grid_gaps, load_history, load_runs, pareto_mask, pick_newest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS, SEEDS, GRID_SEEDS = ["100", "020", "121"], [0, 1, 2], [0, 1, 2, 3]
GENERATIONS = 11
STEMS = ["fig2_accuracy", "fig3_compression", "fig4_similarity", "fig5_best_networks", "pareto_best_networks"]
FILES = sorted([f"{s}.{ext}" for s in STEMS for ext in ("png", "pdf")] + ["summary.csv", "summary.md"])
GRID_OVERRIDES = ["grid.scenarios=[100,020,121]", "grid.seeds=[0,1,2,3]"]


def log_run(client, exp_id, scenario, seed, start_ms, history, finals, status="FINISHED", tags=None):
    run = client.create_run(exp_id, start_time=start_ms, run_name=f"{scenario}-seed{seed}",
                            tags={"scenario": scenario, "seed": str(seed), "config_hash": f"hash{scenario}",
                                  **(tags or {})})
    metrics = [Metric(k, float(v), start_ms + g, g) for k, values in history.items() for g, v in enumerate(values)]
    metrics += [Metric(k, float(v), start_ms, 0) for k, v in finals.items()]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def curves(rng):
    g = np.arange(GENERATIONS)
    acc_final, tau = rng.uniform(0.6, 0.85), rng.uniform(0.5, 2.5)
    return {"accuracy_mean": acc_final * (1 - np.exp(-(g + 1) / tau)) + rng.normal(0, 0.002, GENERATIONS),
            "compression_mean": 0.55 - rng.uniform(0.0, 0.3) * g / g[-1],
            "similarity_mean": rng.uniform(0.05, 0.4, GENERATIONS)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """9 FINISHED runs (3 scenarios x seeds 0-2), a FAILED 100-seed3, an older FINISHED duplicate of 121-seed0."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("ecomp", artifact_location=(root / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    logged, start = {}, int(time.time() * 1000)
    for i, (scenario, seed) in enumerate((s, k) for s in SCENARIOS for k in SEEDS):
        history = curves(rng)
        finals = {"best_test_accuracy": rng.uniform(0.5, 0.88), "best_compression": rng.uniform(0.1, 0.9),
                  "parent_test_accuracy": 0.862}
        run_id = log_run(client, exp_id, scenario, seed, start + 1000 * i, history, finals)
        logged[(scenario, seed)] = {"run_id": run_id, **history, **finals}
    bad = {"best_test_accuracy": 0.01, "best_compression": 0.01, "parent_test_accuracy": 0.862}
    failed = log_run(client, exp_id, "100", 3, start + 50_000, curves(rng), bad, status="FAILED")
    # created last but started a day earlier: the newest 121-seed0 is the one logged above
    older = log_run(client, exp_id, "121", 0, start - 86_400_000, curves(rng), bad)
    return {"uri": uri, "root": root, "client": client, "logged": logged, "failed": failed, "older": older}


def compose_cfg(uri, out, *extra):
    figures.register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("figures", overrides=[f"tracking.uri={uri}", f"output_dir={out}", *GRID_OVERRIDES, *extra])


@pytest.fixture(scope="module")
def report(store):
    out = store["root"] / "report"
    files = figures.build_report(compose_cfg(store["uri"], out))
    return {"out": out, "files": files}


def convergence(acc):
    final = acc[-1]
    return next(g for g, a in enumerate(acc) if abs(a - final) <= 0.01 * final)


def test_failed_runs_are_left_out_and_the_newest_duplicate_is_used(store):
    runs = load_runs(store["uri"], "ecomp")
    assert len(runs) == 10 and store["failed"] not in set(runs.run_id)
    picked, notes = pick_newest(runs)
    assert len(picked) == 9
    assert picked.set_index(["scenario", "seed"]).loc[("121", 0), "run_id"] == store["logged"][("121", 0)]["run_id"]
    assert store["older"] not in set(picked.run_id)
    assert len(notes) == 1 and notes[0].startswith("121-seed0: 2 FINISHED runs with the same config; using the newest")


def test_missing_runs_are_reported(store, report):
    picked, _ = pick_newest(load_runs(store["uri"], "ecomp"))
    missing, outside = grid_gaps(picked, SCENARIOS, GRID_SEEDS)
    assert missing == ["100-seed3", "020-seed3", "121-seed3"] and outside == []
    assert "Missing from the grid (3): 100-seed3, 020-seed3, 121-seed3." in (report["out"] / "summary.md").read_text()


def test_every_file_is_written_and_valid(report):
    assert sorted(p.name for p in report["files"]) == FILES
    assert sorted(p.name for p in report["out"].iterdir()) == FILES
    for path in report["files"]:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
            with Image.open(path) as img:
                img.verify()
                assert img.size[0] > 300 and img.size[1] > 200
        elif path.suffix == ".pdf":
            assert data.startswith(b"%PDF") and len(data) > 1000


def test_table_equals_statistics_of_the_logged_metrics(store, report):
    table = pd.read_csv(report["out"] / "summary.csv", dtype={"scenario": str}).set_index("scenario")
    assert list(table.index) == SCENARIOS
    for scenario in SCENARIOS:
        runs = [store["logged"][(scenario, seed)] for seed in SEEDS]
        values = {"final_pop_accuracy": [r["accuracy_mean"][-1] for r in runs],
                  "final_pop_compression": [r["compression_mean"][-1] for r in runs],
                  "final_pop_similarity": [r["similarity_mean"][-1] for r in runs],
                  "best_test_accuracy": [r["best_test_accuracy"] for r in runs],
                  "best_compression": [r["best_compression"] for r in runs],
                  "convergence_generation": [convergence(r["accuracy_mean"]) for r in runs]}
        assert table.loc[scenario, "n_runs"] == 3
        for stem, v in values.items():
            assert table.loc[scenario, f"{stem}_mean"] == pytest.approx(np.mean(v), rel=1e-5), (scenario, stem)
            assert table.loc[scenario, f"{stem}_sd"] == pytest.approx(np.std(v, ddof=1), rel=1e-5, abs=1e-9)
    # the curves differ in speed: the convergence generations differ and come before the last generation
    assert table.convergence_generation_sd.max() > 0
    assert table.convergence_generation_mean.min() < GENERATIONS - 2


def test_population_figure_has_a_panel_per_seed_and_the_legend_in_grid_order(store):
    runs, _ = pick_newest(load_runs(store["uri"], "ecomp"))
    history = load_history(store["uri"], runs)
    assert sorted(history.generation.unique()) == list(range(GENERATIONS))
    order = ["121", "100", "020"]
    palette = dict(zip(order, ["red", "green", "blue"]))
    fig = figures.population_figure(history, "accuracy_mean", "acc", "title", order, palette, every=3)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == [f"seed {k}" for k in SEEDS]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == order
    # every third generation: 0, 3, 6, 9 on each line
    assert all(list(line.get_xdata()) == [0, 3, 6, 9] for line in axes[0].get_lines()[:3])
    plt.close(fig)


def test_pareto_front_keeps_only_undominated_networks():
    compression = np.array([0.2, 0.3, 0.5, 0.5, 0.9])
    accuracy = np.array([0.70, 0.60, 0.80, 0.75, 0.80])
    assert pareto_mask(compression, accuracy).tolist() == [True, False, True, False, False]


def test_report_is_logged_as_a_summary_run_that_is_not_read_back_as_data(store, report):
    summaries = store["client"].search_runs([store["client"].get_experiment_by_name("ecomp").experiment_id],
                                            "tags.`ecomp.kind` = 'summary'")
    assert len(summaries) >= 1 and summaries[0].info.status == "FINISHED"
    names = sorted(Path(a.path).name for a in store["client"].list_artifacts(summaries[0].info.run_id, "report"))
    assert names == FILES
    assert not set(r.info.run_id for r in summaries) & set(load_runs(store["uri"], "ecomp").run_id)


def test_the_report_of_one_sweep_is_logged_to_its_parent_run(tmp_path):
    """When every run read came from one sweep, its figures and tables go to that sweep's MLflow
    parent run (where the UI groups the runs), not to a separate summary run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("ecomp", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="sweep", tags={"ecomp.kind": "sweep"}).info.run_id
    rng, start = np.random.default_rng(1), int(time.time() * 1000)
    logged = {}
    for i, (scenario, seed) in enumerate((s, k) for s in SCENARIOS for k in GRID_SEEDS):
        finals = {"best_test_accuracy": rng.uniform(0.5, 0.88), "best_compression": rng.uniform(0.1, 0.9),
                  "parent_test_accuracy": 0.862}
        history = curves(rng)
        log_run(client, exp_id, scenario, seed, start + 1000 * i, history, finals,
                tags={"mlflow.parentRunId": parent})
        logged[(scenario, seed)] = {**finals, "final_pop_similarity": history["similarity_mean"][-1]}
    figures.build_report(compose_cfg(uri, tmp_path / "out"))
    assert sorted(Path(a.path).name for a in client.list_artifacts(parent, "report")) == FILES
    assert not client.search_runs([exp_id], "tags.`ecomp.kind` = 'summary'")
    # and the sweep's per-scenario summary, over its seeds (ecomp.app.sweep_summary)
    metrics = client.get_run(parent).data.metrics
    for scenario in SCENARIOS:
        assert metrics[f"{scenario}/n_runs"] == len(GRID_SEEDS)
        for key in ("best_test_accuracy", "best_compression", "final_pop_similarity"):
            values = [logged[(scenario, seed)][key] for seed in GRID_SEEDS]
            assert metrics[f"{scenario}/{key}_mean"] == pytest.approx(np.mean(values), rel=1e-9)
            assert metrics[f"{scenario}/{key}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
        assert f"{scenario}/best_macs_ratio_mean" not in metrics          # not logged by these runs: no metric
    table = client.load_table(exp_id, "sweep_summary.json", run_ids=[parent])
    assert sorted(table.scenario.astype(str).str.zfill(3)) == sorted(SCENARIOS) and set(table.n_runs) == {4}


def test_hydra_app_runs_from_another_directory(store, report, tmp_path):
    out = tmp_path / "reports" / "run2"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "figures.py"), f"tracking.uri={store['uri']}",
                           f"output_dir={out}", *GRID_OVERRIDES, "log_summary_run=false"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]   # no Hydra outputs/ folder
    assert "missing from the grid (3 of 12): 100-seed3, 020-seed3, 121-seed3" in proc.stdout
    assert "121-seed0: 2 FINISHED runs" in proc.stdout
    assert (out / "summary.csv").read_text() == (report["out"] / "summary.csv").read_text()


def test_a_missing_store_is_one_line_of_error_and_no_files(tmp_path):
    db, out = tmp_path / "none" / "mlflow.db", tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "figures.py"), f"tracking.uri=sqlite:///{db}",
                           f"output_dir={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ") and "no MLflow store" in proc.stderr
    assert not db.exists() and not db.parent.exists() and not out.exists()


def test_a_store_without_finished_runs_is_an_error_and_no_files(tmp_path):
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "out"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("ecomp", artifact_location=(tmp_path / "artifacts").as_uri())
    with pytest.raises(ReportError, match=r"no FINISHED runs in experiment 'ecomp' at .*\(no runs\)$"):
        figures.build_report(compose_cfg(uri, out))
    log_run(client, exp_id, "121", 0, int(time.time() * 1000), {"accuracy_mean": [0.5]}, {}, status="FAILED")
    with pytest.raises(ReportError, match=r"no FINISHED runs in experiment 'ecomp' at .*\(1 FAILED\)$"):
        figures.build_report(compose_cfg(uri, out))
    with pytest.raises(ReportError, match="tracking.experiment='other' not found"):
        figures.build_report(compose_cfg(uri, out, "tracking.experiment=other"))
    assert not out.exists()
