"""The run's MLflow store: its artifact location, opening it, and opening the run itself
(skipping a config that already has a FINISHED run). The store's settings come in as a
:class:`ecomp.app.spec.StoreSpec`."""

from __future__ import annotations

import logging
from pathlib import Path

from ecomp.app.provenance import repo_root

log = logging.getLogger(__name__)


def artifact_location(configured: str | None, uri: str) -> str | None:
    """Where a new experiment in store ``uri`` keeps its artifacts: ``tracking.artifact_location``
    when set, else beside a SQLite file, else beside the checkout (a server keeps its own)."""
    from ecomp.app.tracking import default_artifact_location

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
    from ecomp.app.tracking import ensure_experiment

    check_reachable(store.uri, store.timeout_s)
    return store.uri, ensure_experiment(store.uri, store.experiment, store.artifact_location)


def open_run(store, tracker, chash: str, sweep: str | None) -> None:
    """Open the store, close this config's runs left RUNNING by a killed process, stop if it has a
    FINISHED run (:class:`ecomp.app.tracking.SkipRun`, unless ``tracking.skip_finished=false``), else
    create the run (a child of its sweep's parent run, when it has one)."""
    from ecomp.app.tracking import mlflow_defaults

    mlflow_defaults()
    from ecomp.app.sweep_runs import sweep_run_id
    from ecomp.app.tracking import SkipRun, client_for, find_runs

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
