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
from test_scaleout import assert_complete, runs_of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """``postgresql://ecomp@127.0.0.1:<port>/mlflow`` served by a fresh cluster in a temporary folder
    (as user ``postgres`` when the tests run as root: PostgreSQL refuses to run as root; the folder
    is then made directly under the system's temporary folder, which that user can reach)."""
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

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=60, cwd=tempfile_dir)

    pg(str(bin_dir / "initdb"), "-D", str(base / "data"), "-U", "ecomp", "--auth=trust", "--no-sync")
    pg(str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log"), "-w", "-o",
       f"-p {port} -h 127.0.0.1 -k {base} -c fsync=off", "start")
    try:
        pg(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "ecomp", "mlflow")
        yield f"postgresql://ecomp@127.0.0.1:{port}/mlflow"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_a_parallel_sweep_logs_into_postgresql(postgres, parent_cache, tmp_path):
    proc = run_cli("run.py", "-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2",
                   f"parent.cache_dir={parent_cache}", f"tracking.uri={postgres}",
                   f"tracking.artifact_location={(tmp_path / 'artifacts').as_uri()}",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = runs_of(postgres)
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2"]
    for run in runs:
        assert_complete(client, run, generations=6)
        assert run.outputs.model_outputs                     # the model is logged there too


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
