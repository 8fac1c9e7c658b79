"""The tracking store failing under a run: ``run.py`` in a subprocess, real MLflow stores and servers.

Whatever fails, the run's process ends with one line naming the store (or the
artifact folder) and no traceback; the network it computed and its metrics
are kept on disk where that line says; and where the store can still be
written, the run is marked FAILED there, not left RUNNING.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY, run_cli
from test_scaleout import BIN, assert_complete, free_port, healthy, runs_of, start, stop, wait_for
from ecomp.nets.network import load_network

# 301 generations (a flush after each, about 10 s): long enough to break the store mid-run.
LONG = [*TINY[:3], "data.train_size=30000", *TINY[4:], "tracking.flush_every=1"]
GENERATIONS = 301


def one_error_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    """The process failed with a single ``error:`` line, last on stderr, naming ``names``; no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, (proc.stderr + proc.stdout)[-4000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    assert sum(ln.startswith("error:") for ln in lines) == 1, proc.stderr[-3000:]
    for name in names:
        assert name in lines[-1], (name, lines[-1])
    return lines[-1]


def kept_locally(line: str, generations: int) -> Path:
    """The folder the error line names holds the returned network, its config and all its metrics."""
    m = re.search(r"the run's network and metrics are saved in (\S+)$", line)
    assert m, line
    folder = Path(m.group(1))
    assert {"best_network.pt", "best_network.pt.json", "config.yaml", "metrics.json"} <= {
        p.name for p in folder.iterdir()}, list(folder.iterdir())
    saved = json.loads((folder / "metrics.json").read_text())
    assert 0 < saved["metrics"]["best_test_accuracy"] <= 1
    assert len(saved["history"]) == generations and "accuracy_mean" in saved["history"][0]
    load_network(folder / "best_network.pt")                 # a network, readable
    return folder


def popen_run(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env,
                            stdout=open(log.with_suffix(".out"), "w"), stderr=open(log.with_suffix(".err"), "w"))


def finished(proc: subprocess.Popen, log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc.wait(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.with_suffix(".out").read_text(),
                                       log.with_suffix(".err").read_text())


def steps_logged(db: Path) -> int:
    """Generations the store holds (``accuracy_mean`` rows), read straight from the SQLite file."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from metrics where key = 'accuracy_mean'").fetchone()[0]
    except sqlite3.Error:                       # no schema yet, or busy
        return 0


def until(ready, proc: subprocess.Popen, log: Path, what: str, timeout: float = 240) -> None:
    """Wait for ``what`` while the run of ``log`` (its ``.err``) goes on."""
    wait_for(ready, proc, log.with_suffix(".err"), f"the run, waiting for {what},", timeout, every=0.1)


def server_cmd(db: Path, artifacts: Path, port: int) -> list[str]:
    return [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination",
            str(artifacts), "--host", "127.0.0.1", "--port", str(port)]


SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------- a: the server dies mid-run

@pytest.mark.slow
def test_a_server_killed_mid_run_fails_in_one_line_and_keeps_the_network(parent_cache, tmp_path):
    db, artifacts, port = tmp_path / "mlflow.db", tmp_path / "artifacts", free_port()
    uri = f"http://127.0.0.1:{port}"
    args = [*LONG, f"parent.cache_dir={parent_cache}", f"tracking.uri={uri}"]
    server = start(server_cmd(db, artifacts, port), tmp_path / "mlflow1.log", SERVER_ENV)
    run = None
    try:
        wait_for(lambda: healthy(f"{uri}/health"), server, tmp_path / "mlflow1.log", "mlflow server", 120)
        run = popen_run([*args, f"hydra.run.dir={tmp_path / 'out1'}"], tmp_path / "run1", tmp_path / "cwd")
        until(lambda: steps_logged(db) >= 3, run, tmp_path / "run1", "3 generations in the store")
        os.killpg(server.pid, signal.SIGKILL)    # the server dies mid-run
        server.wait(timeout=30)
        proc = finished(run, tmp_path / "run1")
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        stop(server)
    assert steps_logged(db) < GENERATIONS, "the run was over before the server died"
    line = one_error_line(proc, f"tracking.uri={uri!r}")
    assert kept_locally(line, GENERATIONS) == tmp_path / "out1"     # the Hydra run folder

    # the same store served again: the same command completes, the dead run is marked KILLED
    server = start(server_cmd(db, artifacts, port), tmp_path / "mlflow2.log", SERVER_ENV)
    try:
        wait_for(lambda: healthy(f"{uri}/health"), server, tmp_path / "mlflow2.log", "mlflow server", 120)
        proc = run_cli("run.py", *args, f"hydra.run.dir={tmp_path / 'out2'}", timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        client, runs = runs_of(uri)
        assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
        (done,) = [r for r in runs if r.info.status == "FINISHED"]
        assert_complete(client, done, generations=GENERATIONS)
    finally:
        stop(server)


# ---------------------------------------------------------------- b: a flush the store refuses

@pytest.mark.slow
def test_a_failed_flush_fails_in_one_line_and_leaves_nothing_running(parent_cache, tmp_path):
    """The store is locked by another writer (SQLite's ``database is locked``) during one flush, then
    writable again: the run goes on to its end, keeps its results locally and is marked FAILED."""
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    # Three passes over the data (901 generations), one torch thread (the store is opened by a helper
    # process of the lowest priority, which busy cores would keep waiting until late in the run), no
    # model to log (its import is part of that opening): the lock comes mid-run.
    run = popen_run([*LONG, "evolution.epochs=3", "threads=1", "tracking.log_model=false",
                     f"parent.cache_dir={parent_cache}",
                     f"tracking.uri={uri}",
                     f"hydra.run.dir={tmp_path / 'out'}"], tmp_path / "run", tmp_path / "cwd")
    lock = None
    try:
        until(lambda: steps_logged(db) >= 3, run, tmp_path / "run", "3 generations in the store")
        # the store is open and flushing every generation (not all at once when it opened late):
        # its count of generations grows between two looks
        seen = steps_logged(db)
        until(lambda: steps_logged(db) > seen, run, tmp_path / "run", "generations flushed one by one")
        lock = sqlite3.connect(db, timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")          # another writer holds the store: the next flush fails
        until(lambda: "sending the run's metrics failed" in (tmp_path / "run.out").read_text(), run,
              tmp_path / "run", "the failed flush", timeout=120)
        lock.execute("COMMIT")
        lock.close()
        lock = None
        proc = finished(run, tmp_path / "run")
    finally:
        if lock is not None:
            lock.close()
        if run.poll() is None:
            run.kill()
            run.wait()
    line = one_error_line(proc, f"tracking.uri={uri!r}", "sending the run's metrics failed")
    assert "database is locked" in line
    kept_locally(line, 3 * (GENERATIONS - 1) + 1)
    client, runs = runs_of(uri)
    (failed,) = runs
    assert failed.info.status == "FAILED" and "sending the run's metrics failed" in failed.data.tags["error"]
    assert 3 <= len(client.get_metric_history(failed.info.run_id, "accuracy_mean")) < 3 * (GENERATIONS - 1) + 1


# ---------------------------------------------------------------- c: an artifact folder that cannot be written

@pytest.mark.slow
@pytest.mark.parametrize("how", ["under-a-file", "read-only"])
def test_an_unwritable_artifact_folder_fails_in_one_line_and_marks_the_run_failed(how, parent_cache, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    artifacts = store / "artifacts"              # where a sqlite store's artifacts go: beside its file
    if how == "under-a-file":
        artifacts.write_text("not a folder")     # nothing can be created below it, root or not
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder")
        artifacts.mkdir(mode=0o555)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    try:
        proc = run_cli("run.py", *TINY, f"parent.cache_dir={parent_cache}", f"tracking.uri={uri}",
                       f"hydra.run.dir={tmp_path / 'out'}", timeout=300)
    finally:
        if how == "read-only":
            artifacts.chmod(0o755)
    line = one_error_line(proc, f"tracking.uri={uri!r}", f"artifacts to {artifacts.as_uri()}")
    kept_locally(line, 6)
    client, runs = runs_of(uri)
    (failed,) = runs
    assert failed.info.status == "FAILED" and str(artifacts) in failed.data.tags["error"]


# ---------------------------------------------------------------- d: the run's own process is killed

@pytest.mark.slow
def test_a_run_whose_process_is_killed_is_ended_killed_by_its_tracking_process(parent_cache, tmp_path):
    """SIGKILL to the computing process alone (its tracking helper untouched, as when the kernel's
    out-of-memory killer picks it): the helper reads the end of its input and ends the run KILLED."""
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    # Thirty passes over the data (9001 generations, about 55 s of computing here), one torch thread:
    # the other core lets the helper (at the lowest priority) stream the generations once it has
    # opened the store, and the computation is still far from done when the store holds a few.
    total = 30 * (GENERATIONS - 1) + 1
    run = popen_run([*LONG, "evolution.epochs=30", "threads=1", f"parent.cache_dir={parent_cache}",
                     f"tracking.uri={uri}", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path / "run", tmp_path / "cwd")
    try:
        until(lambda: steps_logged(db) >= 3, run, tmp_path / "run", "3 generations in the store")
        seen = steps_logged(db)      # streaming generation by generation, and not past the middle
        until(lambda: seen < steps_logged(db) < total // 2, run, tmp_path / "run", "generations flushed mid-run")
        helpers = [int(p) for p in Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()]
        run.kill()
        run.wait(timeout=30)
        client, runs = runs_of(uri)
        deadline = time.monotonic() + 60
        while runs[0].info.status == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.2)
            client, runs = runs_of(uri)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert helpers, "the run had no tracking process"
    (killed,) = runs
    assert killed.info.status == "KILLED", killed.info.status
    assert "killed process" in killed.data.tags["error"]
    assert steps_logged(db) < total, "the run was over before it was killed"
    for pid in helpers:                               # and the helper has exited
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
