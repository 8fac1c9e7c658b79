"""The run's MLflow store: its artifact location, opening it, and opening the run itself
(skipping a config that already has a FINISHED run). The store's settings come in as a
:class:`ecomp.app.spec.StoreSpec`."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ecomp.app.provenance import repo_root
from ecomp.errors import TrackingError

log = logging.getLogger(__name__)

# MLflow settings EComp changes unless the user set them: fail fast on an unreachable server
# instead of MLflow's minutes of retries, no usage telemetry (the tool runs offline; MLflow's
# telemetry would try the network in the background and at exit), and no "Downloading artifacts"
# bars (logging a model draws two of them).
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                   "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def mlflow_defaults() -> None:
    """Applied before MLflow is first imported by a run (not at this module's import)."""
    for key, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(key, value)


TAG_HASH, TAG_SCENARIO, TAG_SEED, TAG_SWEEP = "config_hash", "scenario", "seed", "sweep"
TAG_METHOD, TAG_KEEP, TAG_VARIANT = "method", "keep", "variant"
# MLflow's UI opens an experiment with this tag in its model-training view (runs), not GenAI's traces.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _columns(kind: str, *keys: str) -> list[str]:
    return [f"{kind}.`{key}`" for key in keys]      # the UI's column ids


# Views of the runs table, opened by #/experiments/<id>/runs?viewStateShareKey=<name>: the UI's
# shared views (its Share button), kept as experiment tags. Columns and grouping are no URL parameters.
RUN_COLUMNS = [*_columns("attributes", "Models"), *_columns("metrics", "best_test_accuracy", "best_compression",
                                                             "best_macs_ratio"),
               *_columns("tags", "method", "scenario", "keep", "seed")]
VIEWS = {"ecomp-runs": {"selectedColumns": RUN_COLUMNS, "orderByKey": "metrics.`best_test_accuracy`"},
         "ecomp-scenarios": {"selectedColumns": RUN_COLUMNS, "groupBy": {
             "aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "scenario"}]}}}
EXPERIMENT_TAGS = {**EXPERIMENT_KIND, **{f"mlflow.sharedViewState.{name}": json.dumps(view) for name, view in VIEWS.items()}}


def default_uri(root: Path) -> str:
    return f"sqlite:///{(Path(root) / 'mlruns' / 'mlflow.db').resolve()}"


def default_artifact_location(root: Path) -> str:
    return (Path(root) / "mlruns" / "artifacts").resolve().as_uri()


def client_for(uri: str):
    """A client of ``uri``, which also becomes the process's fluent tracking URI: nothing this
    process does with MLflow afterwards can fall back to MLflow's default store (a
    ``mlflow.db`` in the working directory)."""
    mlflow_defaults()
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    # A failing database call is raised to the run, which reports it in one line (TrackingError):
    # not also logged by MLflow, traceback and all.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, artifact_location: str | None) -> str:
    """Create the store and the experiment if missing; return the experiment id (race-safe)."""
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    for _ in range(5):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage != "active":
                raise TrackingError(f"tracking.experiment={name!r} is deleted in {uri}; restore it or pick another name")
            for k, v in EXPERIMENT_TAGS.items():
                if k not in exp.tags:                                   # created before this tag was set
                    client.set_experiment_tag(exp.experiment_id, k, v)
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
        except MlflowException:   # another job created it first
            time.sleep(0.2)
    raise TrackingError(f"tracking.experiment={name!r}: cannot be created in {uri}")


def find_runs(client, experiment_id: str, config_hash: str, status: str) -> list:
    return client.search_runs([experiment_id], f"tags.{TAG_HASH} = '{config_hash}' and attributes.status = '{status}'",
                              max_results=100)


def store_error(uri: str | None, what: str, exc: BaseException) -> TrackingError:
    """One line for a failed call to the store: its URI, what failed, and why (the first 300 characters)."""
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())
    return TrackingError(f"tracking.uri={uri!r}: {what} failed ({reason[:300]})")


class SkipRun(Exception):
    """This config already has a FINISHED run (``run``): the work is not done again."""

    def __init__(self, run):
        super().__init__(run.info.run_id)
        self.run = run


def artifact_location(configured: str | None, uri: str) -> str | None:
    """Where a new experiment in store ``uri`` keeps its artifacts: ``tracking.artifact_location``
    when set, else beside a SQLite file, else beside the checkout (a server keeps its own)."""
    if configured:
        return configured
    if uri.startswith(("http://", "https://")):              # a server keeps its own
        return None
    if uri.startswith("sqlite:///"):                          # beside the database file: one folder per store
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return default_artifact_location(repo_root())              # another database: beside the checkout


def prepare_store(store) -> tuple[str, str]:
    """Check the store (a :class:`ecomp.app.spec.StoreSpec`) answers and create the experiment;
    returns ``(uri, experiment_id)``."""
    from ecomp.app.reachable import check_reachable
    check_reachable(store.uri, store.timeout_s)
    return store.uri, ensure_experiment(store.uri, store.experiment, store.artifact_location)


def open_run(store, tracker, chash: str, sweep: str | None) -> None:
    """Open the store, close this config's runs left RUNNING by a killed process, stop if it has a
    FINISHED run (:class:`SkipRun`, unless ``tracking.skip_finished=false``), else
    create the run (a child of its sweep's parent run, when it has one)."""
    mlflow_defaults()
    from ecomp.app.sweep_runs import sweep_run_id

    uri, exp_id = prepare_store(store)
    client = client_for(uri)
    for stale in find_runs(client, exp_id, chash, "RUNNING"):
        # A run of this very config left RUNNING was killed hard (SIGKILL, lost machine).
        log.warning("marking stale RUNNING run %s as KILLED", stale.info.run_id)
        client.set_tag(stale.info.run_id, "error", "left RUNNING by a killed process; marked KILLED by a later sweep")
        client.set_terminated(stale.info.run_id, status="KILLED")
    if store.skip_finished:
        done = find_runs(client, exp_id, chash, "FINISHED")
        if done:
            raise SkipRun(done[0])
    parent = sweep_run_id(client, exp_id, sweep) if sweep else None
    if parent is not None and "mlflow.parentRunId" not in tracker.tags:
        tracker.tags["mlflow.parentRunId"] = parent
    tracker.create(uri, exp_id)
    if store.log_model:                        # done here, beside the run, not after it
        import mlflow.pyfunc  # noqa: F401

        try:
            # Logging a model checks its requirements against the installed packages, and the first
            # check maps every installed file to its package (1.4 s here): a private MLflow helper,
            # its map cached for the process. Without it, the check runs at the end, as MLflow does.
            from mlflow.utils.requirements_utils import _init_modules_to_packages_map

            _init_modules_to_packages_map()
        except Exception:  # noqa: BLE001 - a later MLflow without it
            pass
