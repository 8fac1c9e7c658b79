"""End to end on real FashionMNIST, real Hydra composition and a real (temporary) MLflow store."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import TINY, run_cli
from ecomp.core.evolution import MEASURES
from ecomp.nets.network import load_network
from ecomp.nets.structure import accuracy
from ecomp.app.spec import data_spec
from ecomp.app.pipeline import run_experiment
from ecomp.nets import data as data_mod

STATS = [f"{m}_{s}" for m in MEASURES for s in ("mean", "best", "worst")]
FINAL = ["best_test_accuracy", "best_compression", "best_hidden_units", "parent_test_accuracy", "run_seconds"]

pytestmark = pytest.mark.slow


def runs_of(store: str, experiment: str = "ecomp"):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if "ecomp.kind" not in r.data.tags]   # data runs, not a sweep's parent


def test_single_run_logs_everything_and_best_network_reloads(make_cfg, store, tmp_path):
    cfg = make_cfg("fitness=120", "seed=3")
    result = run_experiment(cfg, scenario="120")
    client, runs = runs_of(store)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "120-seed3"
    assert run.data.tags["scenario"] == "120" and run.data.tags["seed"] == "3"
    assert len(run.data.tags["git_commit"]) >= 7 and run.data.tags["config_hash"]
    assert run.data.params["population.size"] == "10" and run.data.params["fitness.w_sim"] == "2.0"
    for key in STATS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == list(range(6)), key          # generations 0..5 (500 images / 100)
    for key in FINAL:
        assert key in run.data.metrics
    assert 0.5 < run.data.metrics["best_test_accuracy"] <= 1.0
    assert 0 < run.data.metrics["best_compression"] <= 1.0
    # the logged network gives the logged test accuracy again
    folder = client.download_artifacts(run.info.run_id, "", str(tmp_path))
    layers = load_network(f"{folder}/best_network.pt")
    test = data_mod.load(data_spec(cfg).root, train=False)
    assert accuracy(layers, test.x[:1000], test.y[:1000]) == run.data.metrics["best_test_accuracy"]
    assert "population:" in open(f"{folder}/config.yaml").read()
    assert result.history[0]["accuracy_mean"] == pytest.approx(
        client.get_metric_history(run.info.run_id, "accuracy_mean")[0].value)


def test_same_seed_same_numbers_different_seed_differs(make_cfg):
    a = run_experiment(make_cfg("seed=5", "tracking.enabled=false"))
    b = run_experiment(make_cfg("seed=5", "tracking.enabled=false"))
    c = run_experiment(make_cfg("seed=6", "tracking.enabled=false"))
    assert a.history == b.history
    assert a.history[0] != c.history[0]    # different subset -> different first batch


def test_multirun_two_scenarios_two_seeds(parent_cache, store, tmp_path):
    proc = run_cli("run.py", "-m", "fitness=glob(12*)", "seed=0,1", *TINY, f"parent.cache_dir={parent_cache}",
                   f"tracking.uri={store}", f"hydra.sweep.dir={tmp_path / 'multirun'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = runs_of(store)
    assert sorted(r.info.run_name for r in runs) == ["120-seed0", "120-seed1", "121-seed0", "121-seed1"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["sweep"] == str(tmp_path / "multirun")
        for key in STATS:
            assert len(client.get_metric_history(r.info.run_id, key)) == 6, key
    # rerunning the same sweep skips what is FINISHED
    proc = run_cli("run.py", "-m", "fitness=glob(12*)", "seed=0,1", *TINY, f"parent.cache_dir={parent_cache}",
                   f"tracking.uri={store}", f"hydra.sweep.dir={tmp_path / 'multirun2'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(runs_of(store)[1]) == 4


def test_exception_mid_run_marks_failed_and_keeps_metrics(make_cfg, store, monkeypatch):
    from ecomp.core import fitness

    calls = {"n": 0}
    real = fitness.Evaluator.evaluate

    def flaky(self, pop, k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("boom in generation 3")
        return real(self, pop, k)

    monkeypatch.setattr(fitness.Evaluator, "evaluate", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment(make_cfg("tracking.flush_every=1"))
    client, runs = runs_of(store)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "boom in generation 3" in runs[0].data.tags["error"]
    assert len(client.get_metric_history(runs[0].info.run_id, "accuracy_mean")) == 3


def test_keyboard_interrupt_marks_killed(make_cfg, store, monkeypatch):
    from ecomp.core import fitness

    def interrupt(self, pop, k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fitness.Evaluator, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(make_cfg())
    assert [r.info.status for r in runs_of(store)[1]] == ["KILLED"]


def test_cli_single_run_from_another_directory(parent_cache, store, tmp_path):
    from conftest import REPO
    proc = run_cli(str(REPO / "run.py"), "fitness=121", "seed=1", *TINY, f"parent.cache_dir={parent_cache}",
                   f"tracking.uri={store}", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_of(store)[1]
    assert [(r.info.run_name, r.info.status) for r in runs] == [("121-seed1", "FINISHED")]
    assert torch.isfinite(torch.tensor(runs[0].data.metrics["best_test_accuracy"]))


def test_multirun_keeps_other_jobs_when_one_fails(parent_cache, store, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU, where the device=cuda job fails")
    sweep = tmp_path / "multirun"
    proc = run_cli("run.py", "-m", "device=cpu,cuda", *TINY, f"parent.cache_dir={parent_cache}",
                   f"tracking.uri={store}", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1
    assert "1 job(s) of the sweep failed" in proc.stderr and "device=cuda" in proc.stderr
    runs = runs_of(store)[1]
    assert [(r.data.tags["scenario"], r.info.status) for r in runs] == [("121", "FINISHED")]
    assert (sweep / "failed_jobs.txt").read_text().count("\n") == 1
