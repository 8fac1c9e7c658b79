"""MLflow as its users expect it: a logged model that loads and scores, the registry, dataset
inputs, the Source column and the runs view. Real store, real runs (small sizes)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import run_cli
from test_scaleout import assert_models_filed


@pytest.mark.slow
def test_a_run_logs_a_model_that_loads_scores_and_registers(tmp_path, make_cfg):
    import mlflow

    from ecomp.app.parents import load_split
    from ecomp.app.spec import data_spec

    from ecomp.app.pipeline import run_experiment

    cfg = make_cfg("tracking.register_as=tiny-mlp", "seed=1")
    result = run_experiment(cfg)
    uri = cfg.tracking.uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(result.run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"       # the UI's runs view
    # the shared views (docs/tracking.md) of the runs table: the metrics and tags they show are the run's
    views = {k.rsplit(".", 1)[1]: json.loads(v) for k, v in exp.tags.items() if k.startswith("mlflow.sharedViewState.")}
    assert sorted(views) == ["ecomp-runs", "ecomp-scenarios"]
    columns = {c for view in views.values() for c in view["selectedColumns"]}
    assert {f"metrics.`{m}`" for m in ("best_test_accuracy", "best_compression", "best_macs_ratio")} <= columns
    assert all(c[9:-1] in run.data.metrics for c in columns if c.startswith("metrics."))
    assert {c[6:-1] for c in columns if c.startswith("tags.")} - set(run.data.tags) == {"keep"}   # a baseline's
    assert run.data.tags["mlflow.source.name"] and run.data.tags["mlflow.source.type"] == "LOCAL"

    # the model: in the run's outputs and its experiment's models, a pyfunc model from code (no
    # pickle: its artifacts are the code file and best_network.pt), same accuracy
    (output,) = run.outputs.model_outputs
    assert_models_filed(client, [run])
    model = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    assert [s.shape for s in model.metadata.signature.inputs.inputs] == [(-1, 1, 28, 28)]   # images in
    test = load_split(data_spec(cfg), train=False)
    x, y = test.x[:cfg.data.test_size].numpy(), test.y[:cfg.data.test_size].numpy()
    accuracy = float((np.asarray(model.predict(x.reshape(-1, 1, 28, 28))).argmax(1) == y).mean())
    assert accuracy == pytest.approx(run.data.metrics["best_test_accuracy"], abs=1e-9)
    probabilities = model.predict(test.x[:3].numpy().reshape(-1, 1, 28, 28))      # class probabilities out
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    files = {a.path for a in client.list_logged_model_artifacts(output.model_id)}
    assert {"MLmodel", "network_model.py", "artifacts"} <= files and not any(f.endswith(".pkl") for f in files)

    # the registry: one version, tagged with the run's scenario, seed and test accuracy
    (version,) = client.search_model_versions("name='tiny-mlp'")
    assert version.run_id == result.run_id
    assert version.tags["scenario"] == "121" and version.tags["seed"] == "1"
    assert float(version.tags["test_accuracy"]) == pytest.approx(run.data.metrics["best_test_accuracy"], abs=1e-4)

    # what the run saw: subset, validation and test splits as dataset inputs with digests
    seen = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(seen) == {"training", "validation", "test"}
    assert seen["training"].name == "fashion_mnist-subset" and '"num_rows": 500' in seen["training"].profile
    assert len({d.digest for d in seen.values()}) == 3
    # the same seed sees the same subset: same digest; another seed, another one
    other = client.get_run(run_experiment(make_cfg("tracking.log_model=false", "seed=2")).run_id)
    other_seen = {i.tags[0].value: i.dataset.digest for i in other.inputs.dataset_inputs}
    assert other_seen["test"] == seen["test"].digest and other_seen["training"] != seen["training"].digest
    assert not other.outputs.model_outputs


def test_register_as_without_a_logged_model_is_refused(tmp_path, parent_cache):
    proc = run_cli("run.py", "tracking.log_model=false", "tracking.register_as=x", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                   f"parent.cache_dir={parent_cache}", timeout=60)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "tracking.register_as='x'" in lines[0], proc.stderr


def test_parallel_jobs_logging_the_same_datasets_all_succeed(tmp_path):
    """Jobs of one sweep on the same seed log the same datasets at the same moment. MLflow looks a
    dataset up and then inserts it, so without a retry one of two racing jobs failed on the unique
    key (a sweep in a fresh clone lost a run that way). Six runs at once, ten times over: each logs
    its inputs, and every dataset is stored once. (Without the retry, 6 of 10 rounds failed here.)"""
    import threading

    from mlflow import MlflowClient

    from ecomp.app.store import ensure_experiment
    from ecomp.app.tracking import RunTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "ecomp", None)
    errors, run_ids = [], []
    for round_ in range(10):
        trackers = [RunTracker(f"r{round_}-{i}", {}, {}) for i in range(6)]
        for t in trackers:
            t.create(uri, exp)
        barrier = threading.Barrier(len(trackers))
        splits = {"training": (f"subset-{round_}", f"a{round_}", 10, "/data"),
                  "validation": (f"val-{round_}", f"b{round_}", 5, "/data")}

        def log(tracker):
            barrier.wait()
            try:
                tracker.log_datasets(splits)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

        threads = [threading.Thread(target=log, args=(t,)) for t in trackers]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        run_ids += [t.run_id for t in trackers]
    assert errors == []
    client = MlflowClient(uri)
    stored = set()
    for run_id in run_ids:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert len(inputs) == 2
        stored |= {(d.dataset.name, d.dataset.digest) for d in inputs}
    assert len(stored) == 20


def test_one_tracking_helper_serves_a_process_runs_one_after_the_other(make_cfg):
    """The helper process of :class:`TrackerProcess`, as a sweep's worker uses it: one for all its
    runs; a run it fails to open leaves no answer behind for the next; a FINISHED config is skipped."""
    import mlflow

    from ecomp.app import tracker_process
    from ecomp.app.spec import store_spec
    from ecomp.app.store import SkipRun
    from ecomp.errors import TrackingError

    def track(cfg, name: str, chash: str, generations: int = 3):
        tracker = tracker_process.TrackerProcess(name, {"config_hash": chash}, {"p": 1}, flush_every=2)
        with tracker:
            tracker.open(store_spec(cfg), chash, None)
            for g in range(generations):
                tracker.log_generation(g, {"accuracy_mean": g / 10})
            tracker.log_metrics({"best_test_accuracy": 0.5})
            tracker.flush()
        return tracker

    cfg = make_cfg()
    first = track(cfg, "a", "hash-a")
    helper = tracker_process.helper()[0]
    with pytest.raises(TrackingError, match="not-a-scheme"):          # the store refuses this URI
        track(make_cfg("tracking.uri=not-a-scheme://x"), "broken", "hash-b")
    with pytest.raises(SkipRun):                                      # hash-a has a FINISHED run
        track(cfg, "a again", "hash-a")
    second = track(cfg, "c", "hash-c", generations=5)
    assert tracker_process.helper()[0] is helper and helper.poll() is None
    client = mlflow.MlflowClient(cfg.tracking.uri)
    for tracker, steps in ((first, 3), (second, 5)):
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["best_test_accuracy"] == 0.5
        assert [m.step for m in client.get_metric_history(tracker.run_id, "accuracy_mean")] == list(range(steps))


@pytest.mark.slow
def test_a_default_run_prints_no_third_party_warning_and_no_download_bars(tmp_path, parent_cache):
    """What a user sees of ``python run.py``: its own log lines (and its own progress bar), not
    MLflow's advice on type hints nor its "Downloading artifacts" bars while logging the model."""
    for progress in ("true", "false"):
        proc = run_cli("run.py", "parent.hidden=[32,32]", "parent.epochs=1", "population.size=6",
                       "data.train_size=300", "data.batch_size=100", "data.test_size=1000", f"progress={progress}",
                       f"parent.cache_dir={parent_cache}", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                       "tracking.skip_finished=false", f"hydra.run.dir={tmp_path / progress}", timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "121-seed0: test accuracy" in proc.stdout                      # the run did log its model
        assert "Warning" not in out and "Downloading artifacts" not in out, out[-3000:]


def test_mlflow_settings_the_user_made_are_kept(monkeypatch):
    from ecomp.app.store import mlflow_defaults

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    mlflow_defaults()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"     # the user's
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"                # the tool's default


@pytest.mark.slow
def test_logged_models_are_named_after_their_runs_and_tagged_with_what_tells_them_apart(make_cfg):
    """Two runs' models in the Models tab: named after the run (led by the method, no '.'), tagged
    with method, scenario or keep, seed and variant, their sizes as params; the registered
    versions carry the same tags."""
    from mlflow import MlflowClient

    from ecomp.app.pipeline import run_experiment

    ecomp = run_experiment(make_cfg("seed=9", "tracking.register_as=tiny"))
    pruned = run_experiment(make_cfg("method=l1_prune", "method.keep=0.5", "seed=3", "tracking.register_as=tiny"))
    client = MlflowClient(make_cfg().tracking.uri)
    exp_id = client.get_run(ecomp.run_id).info.experiment_id
    models = {m.name: m for m in client.search_logged_models(experiment_ids=[exp_id])}
    assert sorted(models) == ["ecomp-121-seed9", "l1_prune-keep0_5-seed3"]
    (found,) = client.search_logged_models(experiment_ids=[exp_id], filter_string="tags.method = 'l1_prune'")
    assert found.name == "l1_prune-keep0_5-seed3" and found.source_run_id == pruned.run_id
    for model, result, labels in ((models["ecomp-121-seed9"], ecomp, {"method": "ecomp", "scenario": "121",
                                                                        "variant": "121", "seed": "9"}),
                                  (found, pruned, {"method": "l1_prune", "keep": "0.5", "variant": "l1_prune",
                                                   "seed": "3"})):
        assert labels.items() <= model.tags.items(), model.tags
        assert float(model.tags["test_accuracy"]) == pytest.approx(result.metrics["best_test_accuracy"], abs=1e-4)
        assert float(model.params["network.hidden_units"]) == result.metrics["best_hidden_units"]
        assert float(model.params["network.relative_macs"]) == pytest.approx(result.metrics["best_macs_ratio"], rel=1e-5)
        assert model.params["data.train_size"] == "500"                  # the run's config, added by MLflow
        (version,) = client.search_model_versions(f"name='tiny' and run_id='{result.run_id}'")
        assert {k: model.tags[k] for k in (*labels, "test_accuracy")}.items() <= version.tags.items()
        assert version.tags["network.parameters"] == model.params["network.parameters"]
