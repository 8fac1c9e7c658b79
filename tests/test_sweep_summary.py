"""A sweep's MLflow parent run carries the sweep's results: a real 2-scenario x 2-seed sweep into a
SQLite store in tmp_path, the same sweep resumed, then experiments/figures.py on that store; all
read back through the MLflow client."""

from __future__ import annotations

import statistics

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from conftest import REPO, run_cli
from experiments import figures

pytestmark = pytest.mark.slow

SMALL = ["parent.hidden=[32,32]", "parent.epochs=1", "population.size=6", "data.train_size=300",
         "data.batch_size=100", "data.test_size=1000", "progress=false"]
SCENARIOS, SEEDS = ["120", "121"], [0, 1]
# summary key -> the jobs' metric it summarises
KEYS = {"best_test_accuracy": "best_test_accuracy", "best_compression": "best_compression",
        "best_macs_ratio": "best_macs_ratio", "final_pop_similarity": "similarity_mean"}


def sweep(store: str, parent_cache, folder):
    return run_cli("run.py", "-m", "fitness=120,121", "seed=0,1", *SMALL, f"parent.cache_dir={parent_cache}",
                   f"tracking.uri={store}", f"hydra.sweep.dir={folder}")


def sweep_runs(client: MlflowClient, exp_id: str) -> list:
    return client.search_runs([exp_id], "tags.`ecomp.kind` = 'sweep'")


def test_a_sweep_run_holds_its_summary_updated_when_resumed_and_by_figures(parent_cache, store, tmp_path):
    proc = sweep(store, parent_cache, tmp_path / "multirun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    client = MlflowClient(store)
    mlflow.set_tracking_uri(store)          # MlflowClient.load_table finds its runs through the fluent API
    exp_id = client.get_experiment_by_name("ecomp").experiment_id
    (parent,) = sweep_runs(client, exp_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == f"sweep {parent.data.tags['sweep_key'][:8]}"       # short; the command:
    assert "fitness=" in parent.data.tags["mlflow.note.content"]                      # in its description
    jobs = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in jobs) == ["120-seed0", "120-seed1", "121-seed0", "121-seed1"]

    # per-scenario mean and std over the seeds of what the jobs logged
    metrics = parent.data.metrics
    for scenario in SCENARIOS:
        mine = [r for r in jobs if r.data.tags["scenario"] == scenario]
        assert metrics[f"{scenario}/n_runs"] == 2
        for key, source in KEYS.items():
            values = [r.data.metrics[source] for r in mine]
            assert metrics[f"{scenario}/{key}_mean"] == pytest.approx(statistics.fmean(values), rel=1e-9), key
            assert metrics[f"{scenario}/{key}_std"] == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-12)
    # the same table as markdown and as an MLflow table
    folder = client.download_artifacts(parent.info.run_id, "sweep_summary.md", str(tmp_path))
    markdown = open(folder).read()
    assert "| 120 | 2 | 0,1 |" in markdown and "| 121 | 2 | 0,1 |" in markdown
    table = client.load_table(exp_id, "sweep_summary.json", run_ids=[parent.info.run_id])
    assert sorted(table.scenario.astype(str)) == SCENARIOS and list(table.n_runs) == [2, 2]
    row = table[table.scenario.astype(str) == "121"].iloc[0]
    assert row.best_test_accuracy_mean == pytest.approx(metrics["121/best_test_accuracy_mean"], rel=1e-9)

    # resumed (every job FINISHED, so skipped): the same run, FINISHED again, its table replaced
    proc = sweep(store, parent_cache, tmp_path / "multirun2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (again,) = sweep_runs(client, exp_id)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["sweep"] == str(tmp_path / "multirun2")
    history = client.get_metric_history(parent.info.run_id, "121/best_test_accuracy_mean")
    assert len(history) == 2 and history[0].value == history[1].value
    assert len(client.load_table(exp_id, "sweep_summary.json", run_ids=[parent.info.run_id])) == 2

    # figures.py on the store: the figures as images on the sweep's run, its summary logged again
    figures.register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("figures", overrides=[f"tracking.uri={store}", f"output_dir={tmp_path / 'report'}",
                                            "grid.scenarios=[120,121]", "grid.seeds=[0,1]"])
    figures.build_report(cfg)
    images = {a.path for a in client.list_artifacts(parent.info.run_id, "report") if a.path.endswith(".png")}
    assert {f"report/{stem}.png" for stem in ("fig2_accuracy", "fig3_compression", "fig4_similarity",
                                              "fig5_best_networks", "pareto_best_networks")} <= images
    assert len(client.get_metric_history(parent.info.run_id, "121/best_test_accuracy_mean")) == 3
    assert len(client.load_table(exp_id, "sweep_summary.json", run_ids=[parent.info.run_id])) == 2
