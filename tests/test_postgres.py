"""A lab's shared store on PostgreSQL: a real server (Debian's package) on 127.0.0.1, a parallel sweep into it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import TINY, run_cli
from test_scaleout import assert_complete, assert_models_filed, runs_of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PASSWORD = "pw-0f3a9c-never-stored"


@pytest.fixture(scope="module")
def postgres():
    """``postgresql://ecomp:<PASSWORD>@127.0.0.1:<port>/mlflow`` served by a fresh cluster in a temporary
    folder, password-checked over TCP (as user ``postgres`` when the tests run as root: PostgreSQL
    refuses to run as root; the folder is then made directly under the system's temporary folder,
    which that user can reach). Yields ``(uri, pg_dump command)``."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql)")
    bin_dir = found[-1].parent
    base = Path(tempfile_dir := tempfile.mkdtemp(prefix="ecomp-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
        os.chmod(base, 0o700)
    port = _free_port()

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=60, cwd=tempfile_dir,
                              env={**os.environ, "PGPASSWORD": PASSWORD})

    (base / "pw").write_text(PASSWORD + "\n")
    if as_user:
        shutil.chown(base / "pw", "postgres")
    pg(str(bin_dir / "initdb"), "-D", str(base / "data"), "-U", "ecomp", "--auth-local=trust",
       "--auth-host=scram-sha-256", f"--pwfile={base / 'pw'}", "--no-sync")
    pg(str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log"), "-w", "-o",
       f"-p {port} -h 127.0.0.1 -k {base} -c fsync=off", "start")
    try:
        pg(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "ecomp", "mlflow")
        dump = lambda: pg(str(bin_dir / "pg_dump"), "-h", "127.0.0.1", "-p", str(port), "-U", "ecomp",  # noqa: E731
                          "--data-only", "mlflow").stdout.decode(errors="replace")
        yield f"postgresql://ecomp:{PASSWORD}@127.0.0.1:{port}/mlflow", dump
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_a_parallel_sweep_logs_into_postgresql_and_its_password_is_stored_nowhere(postgres, parent_cache,
                                                                                  tmp_path, monkeypatch):
    """The README's shared-store form, password in the URI: a sweep of 3 jobs and a single run.
    The password is then searched for in the whole database (a dump of every table: params,
    tags, run names, notes), every file of the runs' output folders and artifacts, and what the
    processes printed."""
    uri, dump = postgres
    monkeypatch.delenv("PGPASSWORD", raising=False)
    proc = run_cli("run.py", "-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2",
                   f"parent.cache_dir={parent_cache}", f"tracking.uri={uri}",
                   f"tracking.artifact_location={(tmp_path / 'artifacts').as_uri()}",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run_cli("run.py", *TINY, "seed=3", f"parent.cache_dir={parent_cache}", f"tracking.uri={uri}",
                     f"tracking.artifact_location={(tmp_path / 'artifacts').as_uri()}",
                     f"hydra.run.dir={tmp_path / 'run'}", timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    monkeypatch.setenv("PGPASSWORD", PASSWORD)            # this process reads the store as libpq's user would
    client, runs = runs_of(uri.replace(f":{PASSWORD}@", "@"))
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2", "3"]
    stored = dump()
    assert "sweep" in stored and "tracking.uri" in stored and runs[0].info.run_id in stored   # the dump is whole
    assert PASSWORD not in stored
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "overrides.yaml" for p in files) and any(p.name == "config.yaml" for p in files)
    leaks = [str(p) for p in files if PASSWORD.encode() in p.read_bytes()] + \
            [str(p) for p in tmp_path.rglob("*") if PASSWORD in p.name]
    assert not leaks
    assert PASSWORD not in proc.stdout + proc.stderr + single.stdout + single.stderr
    for run in runs:
        assert_complete(client, run, generations=6)
        assert run.outputs.model_outputs                     # the model is logged there too
    assert_models_filed(client, runs)


def test_a_postgresql_uri_without_its_driver_names_the_extra(tmp_path, parent_cache):
    """psycopg2 is not what the postgres extra installs: a +psycopg2 URI shows the message a user
    without the extra gets for a plain postgresql:// one."""
    if not _missing("psycopg2"):
        pytest.skip("psycopg2 is installed here: nothing is missing")
    proc = run_cli("run.py", "tracking.uri=postgresql+psycopg2://u@127.0.0.1:1/db", f"parent.cache_dir={parent_cache}",
                   timeout=60)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "the PostgreSQL driver (psycopg2) is not installed; pip install -e '.[postgres]'" in lines[0]


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None
