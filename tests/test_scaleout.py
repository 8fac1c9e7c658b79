"""Scaling sweeps out: parallel jobs into one SQLite store, resuming a killed sweep, a Ray cluster + MLflow server.

The services are real and run on 127.0.0.1; each is started in its own
process group and that group alone is stopped afterwards, whatever happens.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import REPO, TINY, run_cli
from ecomp.app.callbacks import available_cores, threads_per_job
from ecomp.core.evolution import MEASURES

STATS = [f"{m}_{s}" for m in MEASURES for s in ("mean", "best", "worst")]
BIN = Path(sys.executable).parent
TRAINED = "trained the parent"


def runs_of(uri: str, experiment: str = "ecomp", kind: str | None = None):
    """The experiment's data runs (``kind=None``) or its runs tagged ``ecomp.kind=<kind>`` (e.g. sweep parents)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if r.data.tags.get("ecomp.kind") == kind]


def assert_models_filed(client: MlflowClient, runs) -> None:
    """Read as the UI's Models tab reads it: each run's logged model is in the run's experiment, with
    its artifacts under that experiment's artifact location, and the Default experiment (0) has none."""
    for exp_id in {r.info.experiment_id for r in runs}:
        models = client.search_logged_models(experiment_ids=[exp_id])
        mine = [r for r in runs if r.info.experiment_id == exp_id]
        assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in mine)
        root = client.get_experiment(exp_id).artifact_location
        assert all(m.artifact_location.startswith(root) for m in models), (root, models[0].artifact_location)
        # "Logged from": the run's script, as its run says (not the tracking helper's)
        sources = {r.info.run_id: r.data.tags["mlflow.source.name"] for r in mine}
        assert all(Path(m.tags.get("mlflow.source.name", "")).name == sources[m.source_run_id] for m in models), \
            [(m.tags.get("mlflow.source.name"), sources[m.source_run_id]) for m in models]
    assert not client.search_logged_models(experiment_ids=["0"])


def assert_complete(client: MlflowClient, run, generations: int) -> None:
    """FINISHED, every per-generation metric at every step, the final metrics logged."""
    assert run.info.status == "FINISHED", run.info.run_name
    for key in STATS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(generations)), (run.info.run_name, key, steps)
    assert 0 < run.data.metrics["best_test_accuracy"] <= 1


def job_logs(sweep_dir: Path) -> list[str]:
    return [p.read_text() for p in sorted(sweep_dir.rglob("run.log"))]


# ---------------------------------------------------------------- threads per job (fast)

@pytest.mark.parametrize("launcher, cores, expected", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 3}, 16, 5),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -2}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 1}, 8, 8),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
      "ray": {"init": {}, "remote": {"num_cpus": 4}}}, 64, 4),
    ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
      "ray": {"init": {}, "remote": {}}}, 64, 1),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8, None),
])
def test_threads_per_job_makes_jobs_times_threads_fit_the_cores(launcher, cores, expected):
    assert threads_per_job(OmegaConf.create(launcher), cores) == expected


def test_the_repo_launcher_configs_compose():
    from hydra import compose, initialize_config_dir
    from ecomp.app.cli import CONF_DIR
    from ecomp.app.config import register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        ray = compose("config", overrides=["hydra/launcher=ray"], return_hydra_config=True).hydra.launcher
        jl = compose("config", overrides=["hydra/launcher=joblib"], return_hydra_config=True).hydra.launcher
    assert ray._target_.endswith("RayLauncher") and ray.ray.init.address == "auto"
    assert "object_store_memory" in ray.ray.init and ray.ray.init.object_store_memory is None
    assert ray.ray.remote.num_cpus == 1
    assert jl._target_.endswith("JoblibLauncher") and jl.n_jobs == -1


# ---------------------------------------------------------------- one machine, jobs in parallel

@pytest.mark.slow
def test_parallel_sweep_into_one_sqlite_store_loses_nothing(store, tmp_path):
    parents = tmp_path / "parents"          # empty: the sweep must train the parent, once
    sweep = tmp_path / "multirun"
    t = time.perf_counter()
    proc = run_cli("run.py", "-m", "fitness=120,021", "seed=0,1,2", *TINY, f"parent.cache_dir={parents}",
                   f"tracking.uri={store}", "tracking.flush_every=1", f"hydra.sweep.dir={sweep}",
                   "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", timeout=400)
    elapsed = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "database is locked" not in out and "Traceback" not in out
    client, runs = runs_of(store)
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(f"{f}-seed{s}" for f in ("120", "021") for s in range(3)), names   # no duplicates
    (parent,) = runs_of(store, kind="sweep")[1]              # one MLflow parent run, every job nested in it
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep"] == str(sweep)
    for r in runs:
        assert_complete(client, r, generations=6)
        assert r.data.tags["sweep"] == str(sweep) and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert_models_filed(client, runs)
    # the parent was trained once, before the jobs, by the launching process
    assert out.count(TRAINED) == 1 and len(list(parents.glob("parent-*.pt"))) == 1
    logs = job_logs(sweep)
    assert len(logs) == 6 and not any(TRAINED in log for log in logs)
    # the jobs ran in two worker processes, each with cores // 2 torch threads
    threads = [re.search(r"torch threads for this job: (\d+) \(pid (\d+)\)", log) for log in logs]
    assert all(threads), logs[0][-2000:]
    assert {int(m.group(1)) for m in threads} == {max(1, available_cores() // 2)}
    assert len({m.group(2) for m in threads}) == 2
    print(f"parallel sweep of 6 runs: {elapsed:.1f} s")


@pytest.mark.slow
def test_sweep_over_the_parent_trains_each_parent_once_before_the_jobs(tmp_path):
    parents = tmp_path / "parents"
    proc = run_cli("run.py", "-m", "parent.hidden=[16,16],[24,24]", "seed=0", *TINY[1:],
                   f"parent.cache_dir={parents}", "tracking.enabled=false",
                   f"hydra.sweep.dir={tmp_path / 'multirun'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    launched = out.index("Launching 2 jobs locally")
    assert out.count(TRAINED) == 2 and out.rindex(TRAINED) < launched
    assert len(list(parents.glob("parent-*.pt"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (["population.size=3", "hydra/launcher=joblib"], "error: invalid config: population.size=3"),
    (["tracking.uri=http://127.0.0.1:9", "hydra/launcher=joblib"], "MLflow server unreachable"),
    (["hydra/launcher=ray", "hydra.launcher.ray.init.address=127.0.0.1:9"], "Ray cluster '127.0.0.1:9' does not answer"),
], ids=["bad-value", "no-mlflow-server", "no-ray-cluster"])
def test_a_sweep_that_cannot_work_fails_once_before_any_job(overrides, message, parent_cache, store, tmp_path):
    sweep = tmp_path / "multirun"
    proc = run_cli("run.py", "-m", "seed=0,1", *TINY, f"parent.cache_dir={parent_cache}", f"tracking.uri={store}",
                   *overrides, f"hydra.sweep.dir={sweep}", timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("error:") == 1, proc.stderr[-2000:]
    assert not sweep.exists()    # no job started


# ---------------------------------------------------------------- resuming a sweep killed hard

# Slower than TINY (50 generations), so that a run stays RUNNING long enough to be killed mid-run.
SLOW = [*TINY[:3], "data.train_size=5000", *TINY[4:], "tracking.flush_every=1"]
GRID = ["fitness=120,021", "seed=0,1"]


@pytest.mark.slow
def test_rerunning_a_killed_sweep_reruns_only_what_is_missing(parent_cache, store, tmp_path):
    args = ["run.py", "-m", *GRID, *SLOW, f"parent.cache_dir={parent_cache}", f"tracking.uri={store}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "sweep1.log", "w")
    sweep = subprocess.Popen([sys.executable, *args, f"hydra.sweep.dir={tmp_path / 'multirun1'}"], cwd=REPO,
                             stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    killed = finished = client = None
    try:
        deadline = time.monotonic() + 300
        while killed is None:
            assert sweep.poll() is None, (tmp_path / "sweep1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no run was seen RUNNING mid-run"
            if client is None:   # open the store only once the sweep has created it
                if "sweep prepared" not in (tmp_path / "sweep1.log").read_text():
                    time.sleep(0.2)
                    continue
                client = MlflowClient(store)
            runs = runs_of(store)[1]
            running = [r for r in runs if r.info.status == "RUNNING"]
            done = [r for r in runs if r.info.status == "FINISHED"]
            # the second job, a few generations in: SIGKILL the sweep (and so that job) at once
            if done and running and len(client.get_metric_history(running[0].info.run_id, "accuracy_mean")) >= 3:
                os.killpg(sweep.pid, signal.SIGKILL)
                killed, finished = running[0], {r.info.run_name: r.info.run_id for r in done}
            time.sleep(0.1)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
        log.close()
    assert runs_of(store)[1] and client.get_run(killed.info.run_id).info.status == "RUNNING"  # MLflow never heard

    proc = run_cli(*args, f"hydra.sweep.dir={tmp_path / 'multirun2'}", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = runs_of(store)
    by_status: dict[str, list] = {}
    for r in runs:
        by_status.setdefault(r.info.status, []).append(r)
    assert set(by_status) == {"FINISHED", "KILLED"}
    # the killed run: marked KILLED, its partial metrics kept
    [stale] = by_status["KILLED"]
    assert stale.info.run_id == killed.info.run_id and "killed process" in stale.data.tags["error"]
    assert 3 <= len(client.get_metric_history(stale.info.run_id, "accuracy_mean")) < 51
    # exactly one FINISHED run per grid point; those finished before the kill were not rerun
    names = sorted(r.info.run_name for r in by_status["FINISHED"])
    assert names == ["021-seed0", "021-seed1", "120-seed0", "120-seed1"]
    for r in by_status["FINISHED"]:
        assert_complete(client, r, generations=51)
        if r.info.run_name in finished:
            assert r.info.run_id == finished[r.info.run_name]
        else:
            assert r.data.tags["sweep"] == str(tmp_path / "multirun2")
    assert killed.info.run_name not in finished
    # the resumed sweep kept its MLflow parent run: one parent, every run of both attempts under it
    (parent,) = runs_of(store, kind="sweep")[1]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep"] == str(tmp_path / "multirun2")
    assert {r.data.tags.get("mlflow.parentRunId") for r in runs} == {parent.info.run_id}

    # tracking.skip_finished=false runs a grid point again even though it is FINISHED
    proc = run_cli("run.py", "-m", "fitness=120", "seed=0", *SLOW, f"parent.cache_dir={parent_cache}",
                   f"tracking.uri={store}", "tracking.skip_finished=false",
                   f"hydra.sweep.dir={tmp_path / 'multirun3'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_of(store)[1]
    assert sorted(r.info.run_name for r in runs if r.info.status == "FINISHED").count("120-seed0") == 2
    assert len(runs) == 6


# ---------------------------------------------------------------- a Ray cluster and an MLflow server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    """Start a service in a process group of its own, so that it (and only it) can be stopped."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=log.parent)


def stop(proc: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM the service's process group, SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    proc.wait(timeout=grace)


def wait_for(ready, proc: subprocess.Popen, log: Path, what: str, timeout: float, every: float = 0.5) -> None:
    """Poll ``ready()`` every ``every`` seconds; fail, quoting ``log``, if ``proc`` ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(every)


def ray_env(**extra: str) -> dict[str, str]:
    """This environment for a Ray cluster of the tests' own: no inherited address, no usage stats,
    no deduplicated logs, and no background job runner in the MLflow server."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **extra)
    return env


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.distributed
def test_ray_cluster_sweep_logs_to_an_mlflow_server(tmp_path):
    t0 = time.perf_counter()
    env = ray_env()
    ray_dir = Path(tempfile.mkdtemp(prefix="ecomp-ray-", dir="/tmp"))   # short: Ray's socket paths
    gcs, mlflow_port = free_port(), free_port()
    uri = f"http://127.0.0.1:{mlflow_port}"
    ray_log, mlflow_log = tmp_path / "ray.log", tmp_path / "mlflow.log"
    services = []
    try:
        services.append(start([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                               f"--port={gcs}", "--num-cpus=2", "--include-dashboard=false",
                               "--disable-usage-stats", f"--temp-dir={ray_dir}",
                               "--object-store-memory=100000000", f"--ray-client-server-port={free_port()}",
                               f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
                              ray_log, env))
        services.append(start([str(BIN / "mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination",
                               str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(mlflow_port)],
                              mlflow_log, env))
        wait_for(lambda: "Ray runtime started" in ray_log.read_text(), services[0], ray_log, "ray start", 120)
        wait_for(lambda: healthy(f"{uri}/health"), services[1], mlflow_log, "mlflow server", 120)
        t_up = time.perf_counter() - t0

        parents = tmp_path / "parents"
        proc = subprocess.run(
            [sys.executable, "run.py", "-m", "fitness=120,021", "seed=0", *TINY, f"parent.cache_dir={parents}",
             f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
             "hydra/launcher=ray", f"hydra.launcher.ray.init.address=127.0.0.1:{gcs}"],
            cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        client, runs = runs_of(uri)
        assert sorted(r.info.run_name for r in runs) == ["021-seed0", "120-seed0"]
        for r in runs:
            assert_complete(client, r, generations=6)
            assert "best_network.pt" in [a.path for a in client.list_artifacts(r.info.run_id)]
        stored = [f for f in (tmp_path / "artifacts").rglob("best_network.pt") if "models" not in f.parts]
        assert len(stored) == 2                    # the runs' artifacts, proxied to the server (models aside)
        assert_models_filed(client, runs)
        # the jobs ran as Ray tasks (their output comes back prefixed with the task and pid),
        # and the parent was trained once, by the launching process, not by the tasks
        assert len(re.findall(r"\(_run_job pid=\d+\).*torch threads for this job: 1", out)) == 2, out[-4000:]
        assert out.count(TRAINED) == 1 and not re.search(r"\(_run_job pid=\d+\).*" + TRAINED, out)
        print(f"services up in {t_up:.1f} s, whole test {time.perf_counter() - t0:.1f} s")
    finally:
        for proc in reversed(services):
            stop(proc)
        shutil.rmtree(ray_dir, ignore_errors=True)
