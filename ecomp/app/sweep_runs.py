"""One MLflow parent run per sweep, so that the UI groups a sweep's jobs under it.

:func:`open_sweep_run` is called once by the sweep's launching process (``SweepSetup``):
it finds the parent run of the same sweep, by the hash of its command-line overrides
(so rerunning a killed sweep keeps its parent, and marks it RUNNING again), or creates it,
and records the current sweep folder on it (its summary is logged on it when the sweep ends:
:mod:`ecomp.app.sweep_summary`). Each job then finds it by that folder
(:func:`sweep_run_id`, on the job's own process: any launcher, a Ray node too) and is created
with MLflow's ``mlflow.parentRunId`` tag. A sweep whose sweeper makes its own parent runs
(an Optuna study's) passes ``tracking.parent_run`` to its jobs instead.
"""

from __future__ import annotations

import hashlib
import json

KIND_TAG, KIND = "ecomp.kind", "sweep"          # the parent is no data run: the reports leave it out
KEY_TAG, DIR_TAG = "sweep_key", "sweep"


def sweep_key(experiment: str, overrides: list[str]) -> str:
    """The identity of a sweep: its experiment and its command-line overrides (in any order)."""
    text = json.dumps([experiment, sorted(overrides)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_sweep_run(client, experiment_id: str, key: str, sweep_dir: str, command: str) -> str:
    """The sweep's parent run (found by ``key`` or created), RUNNING, tagged with ``sweep_dir``."""
    found = client.search_runs([experiment_id], f"tags.`{KIND_TAG}` = '{KIND}' and tags.{KEY_TAG} = '{key}'",
                               max_results=1)
    name = f"sweep {key[:8]}"                 # the command, too long for the runs table, is its description
    if found:
        run_id = found[0].info.run_id
        client.set_tag(run_id, DIR_TAG, sweep_dir)
        client.update_run(run_id, status="RUNNING", name=name)
        return run_id
    tags = {KIND_TAG: KIND, KEY_TAG: key, DIR_TAG: sweep_dir, "mlflow.note.content": f"`{command}`"}
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def close_sweep_run(client, experiment_id: str, sweep_dir: str, failed: bool) -> None:
    """End the sweep's parent run FINISHED, or FAILED when ``failed``."""
    run_id = sweep_run_id(client, experiment_id, sweep_dir)
    if run_id is not None:
        client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def sweep_run_id(client, experiment_id: str, sweep_dir: str) -> str | None:
    """The parent run of the sweep writing into ``sweep_dir`` (None when there is none)."""
    quoted = sweep_dir.replace("'", "\\'")
    found = client.search_runs([experiment_id], f"tags.`{KIND_TAG}` = '{KIND}' and tags.{DIR_TAG} = '{quoted}'",
                               max_results=1)
    return found[0].info.run_id if found else None
