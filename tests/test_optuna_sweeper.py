"""``hydra/sweeper=optuna``: a multi-objective Optuna search as a Hydra sweeper (hydra_plugins/ecomp_optuna_sweeper).

End to end as users run it (``python run.py -m hydra/sweeper=optuna ...``), with a real MLflow
store and a real study database in a temporary folder, at the small sizes of ``TINY``.
"""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient

from conftest import TINY, run_cli
from test_scaleout import assert_models_filed
from hydra_plugins.ecomp_optuna_sweeper._space import Dim, SearchError, dim_of, override_value
from hydra_plugins.ecomp_optuna_sweeper.sweeper import (METRICS, TAG_ROLE, TAG_STUDY, TAG_TRIAL, ECompOptunaSweeper,
                                                        study_name_for)

SPACE_KEYS = ["fitness.w_acc", "fitness.w_sim", "fitness.w_comp", "operators.mutation.rate",
              "operators.selection.temperature", "operators.selection.elite"]


# ---------------------------------------------------------------- the space and the study's identity (fast)

def parse(text: str):
    return OverridesParser.create().parse_overrides([text])[0].value()


def test_the_sweep_syntax_becomes_the_search_space():
    assert dim_of("a", parse("a=interval(0, 10)")) == Dim("a", "float", 0.0, 10.0, False)
    assert dim_of("a", parse("a=tag(log, interval(0.05, 2))")) == Dim("a", "float", 0.05, 2.0, True)
    assert dim_of("a", parse("a=tag(int, interval(1, 8))")) == Dim("a", "int", 1.0, 8.0, False)
    assert dim_of("a", parse("a=choice(0, 2, 4)")).choices == (0, 2, 4)
    assert dim_of("a", parse("a=range(0, 6, 2)")).choices == (0, 2, 4)
    with pytest.raises(SearchError, match=r"a=interval\(5, 1\): low > high"):
        dim_of("a", parse("a=interval(5, 1)"))
    with pytest.raises(SearchError, match="log-scale interval needs low > 0"):
        dim_of("a", parse("a=tag(log, interval(0, 1))"))


@pytest.mark.parametrize("value", [0.1 + 0.2, 1e-7, 3, True, "roulette"])
def test_a_suggested_value_reaches_the_job_unchanged(value):
    ov = OverridesParser.create().parse_overrides([f"k={override_value(value)}"])[0]
    assert ov.value() == value and type(ov.value()) is type(value)


def sweeper(**changes) -> ECompOptunaSweeper:
    settings = dict(n_trials=4, seeds_per_trial=1, batch_size=None, objectives=["best_val_accuracy", "best_compression"],
                    directions=["maximize", "minimize"], sampler={"name": "nsgaii", "seed": 0, "population_size": 20},
                    storage=None, study_name=None, max_failures=3, params={})
    settings.update(changes)
    return ECompOptunaSweeper(**settings)


def test_two_different_searches_never_share_a_study_name():
    dims = {"fitness.w_sim": dim_of("fitness.w_sim", parse("x=interval(0, 10)"))}
    name = study_name_for(sweeper().definition(dims, ["population.size=10"]))
    # what does not change the trials' numbers does not change the study: n_trials, the store, the launcher
    assert name == study_name_for(sweeper(n_trials=60, batch_size=2).definition(
        dims, ["population.size=10", "tracking.uri=sqlite:///x.db", "progress=false"]))
    others = [
        sweeper().definition({"fitness.w_sim": dim_of("fitness.w_sim", parse("x=interval(0, 5)"))},
                             ["population.size=10"]),
        sweeper().definition(dims, ["population.size=10", "seed=1"]),
        sweeper(sampler={"name": "nsgaii", "seed": 1, "population_size": 20}).definition(dims, ["population.size=10"]),
        sweeper(sampler={"name": "tpe", "seed": 0, "population_size": 20}).definition(dims, ["population.size=10"]),
        sweeper(seeds_per_trial=3).definition(dims, ["population.size=10"]),
        sweeper(objectives=["best_val_accuracy", "best_params_ratio"]).definition(dims, ["population.size=10"]),
    ]
    names = [study_name_for(d) for d in others]
    assert name not in names and len(set(names)) == len(names)


@pytest.mark.parametrize("changes, message", [
    ({"n_trials": 0}, "hydra.sweeper.n_trials=0: an integer >= 1"),
    ({"directions": ["maximize"]}, "does not match hydra.sweeper.objectives"),
    ({"directions": ["maximize", "smaller"]}, "'smaller' is not one of maximize, minimize"),
    ({"objectives": ["accuracy", "best_compression"]}, "'accuracy' is not a metric a run returns"),
    ({"objectives": ["best_test_accuracy", "best_compression"]}, "the test set is kept for the report"),
    ({"sampler": {"name": "cmaes", "seed": 0, "population_size": 20}}, "sampler.name='cmaes': one of nsgaii, tpe"),
])
def test_bad_settings_are_one_line_errors(changes, message):
    with pytest.raises(SearchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        sweeper(**changes).check_settings()


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_a_study_reopened_fails_its_stale_trials_and_enqueues_them_again(storage, tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if storage == "sqlite" else f"journal://{tmp_path / 'study.log'}"
    dims = {"fitness.w_sim": dim_of("fitness.w_sim", parse("x=interval(0, 10)"))}
    s = sweeper()
    definition = s.definition(dims, [])
    study = s.open_study("ecomp-test", definition, url)
    done = study.ask()
    dims["fitness.w_sim"].suggest(done)
    study.tell(done, [0.8, 0.5])
    stale = study.ask()                    # asked, never told: the process was killed
    w_sim = dims["fitness.w_sim"].suggest(stale)
    study = s.open_study("ecomp-test", definition, url)          # the rerun
    assert states(study) == ["COMPLETE", "FAIL", "WAITING"]
    again = study.ask()
    assert dims["fitness.w_sim"].suggest(again) == w_sim and again.number == 2
    with pytest.raises(SearchError, match="was made by another search"):
        sweeper(study_name="ecomp-test").open_study("ecomp-test", {**definition, "seeds_per_trial": 2}, url)


def test_only_trials_whose_process_is_gone_are_retried(tmp_path):
    """Several processes may run one study: a RUNNING trial is another's while its process lives."""
    import os
    import socket
    import subprocess

    from hydra_plugins.ecomp_optuna_sweeper.sweeper import OWNER

    dead = subprocess.Popen(["true"])
    dead.wait()
    here = socket.gethostname()
    owners = [f"{here}:{os.getppid()}", f"elsewhere.example:{os.getpid()}", f"{here}:{dead.pid}", None]
    dims = {"fitness.w_sim": dim_of("fitness.w_sim", parse("x=interval(0, 10)"))}
    s = sweeper()
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = s.open_study("ecomp-test", s.definition(dims, []), url)
    for who in owners:
        t = study.ask()
        dims["fitness.w_sim"].suggest(t)
        if who:
            t.set_user_attr(OWNER, who)
    study = s.open_study("ecomp-test", s.definition(dims, []), url)
    assert states(study) == ["RUNNING", "RUNNING", "FAIL", "FAIL", "WAITING", "WAITING"]


# ---------------------------------------------------------------- end to end

@pytest.fixture
def search(parent_cache, store, tmp_path):
    """Run ``run.py -m hydra/sweeper=optuna`` on TINY into the test's store; returns the completed process."""
    calls = []

    def _search(*args: str, n_trials: int = 4, timeout: float = 400):
        calls.append(1)
        return run_cli("run.py", "-m", "hydra/sweeper=optuna", f"hydra.sweeper.n_trials={n_trials}", *TINY,
                       f"parent.cache_dir={parent_cache}", f"tracking.uri={store}",
                       f"hydra.sweep.dir={tmp_path / f'multirun{len(calls)}'}", *args, timeout=timeout)

    return _search


def runs_in(store: str) -> tuple[MlflowClient, list, list]:
    """``(client, trial runs, study parent runs)`` of the store's ``ecomp`` experiment."""
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("ecomp")
    runs = [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)
    return (client, [r for r in runs if r.data.tags.get(TAG_ROLE) != "study"],
            [r for r in runs if r.data.tags.get(TAG_ROLE) == "study"])


def study_of(tmp_path, name: str | None = None):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    return optuna.load_study(study_name=name or names[0], storage=storage), names


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


@pytest.mark.slow
def test_a_four_trial_search_lands_four_runs_under_one_parent(search, store, tmp_path):
    proc = search("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert out.count("is launching 2 jobs") == 2 and "Traceback" not in out    # 2 trials at a time, twice
    client, runs, parents = runs_in(store)
    [parent] = parents
    name = parent.data.tags[TAG_STUDY]
    assert parent.info.status == "FINISHED" and parent.data.metrics["complete_trials"] == 4
    assert parent.data.params["search.space.fitness.w_sim"] == "float(0, 10)"
    assert sorted(int(r.data.tags[TAG_TRIAL]) for r in runs) == [0, 1, 2, 3]
    study, names = study_of(tmp_path)
    assert names == [name] and states(study) == ["COMPLETE"] * 4
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags[TAG_STUDY] == name and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        trial = study.trials[int(r.data.tags[TAG_TRIAL])]
        for key in SPACE_KEYS:      # the suggested values, once, as the run's config params
            assert float(r.data.params[key]) == pytest.approx(trial.params[key], rel=1e-12)
        assert trial.values == pytest.approx([r.data.metrics["best_val_accuracy"], r.data.metrics["best_compression"]])
        assert set(METRICS) <= set(r.data.metrics)     # every objective the sweeper accepts is a metric runs return
        assert not [k for k in r.data.params if k.startswith(("tracking.tags", "tracking.parent_run"))]  # tags only
        assert r.data.tags["scenario"] != "121"        # not the paper's scenario: its weights are the trial's
    assert len({r.data.tags["config_hash"] for r in runs}) == 4
    assert all(r.outputs.model_outputs for r in runs)        # each trial logs its model, filed with its run
    assert_models_filed(client, runs)

    # the report: the trials' front, its settings and test accuracy; the trials stay out of the paper's figures
    import pandas as pd

    proc = run_cli("experiments/figures.py", f"tracking.uri={store}", f"output_dir={tmp_path / 'reports'}",
                   "log_summary_run=false", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert files == ["search_front.csv", "search_front.md", "search_front.pdf", "search_front.png"]
    front = pd.read_csv(tmp_path / "reports" / "search_front.csv")
    assert 1 <= len(front) <= 4 and set(front.kind) == {"search front"} and set(SPACE_KEYS) <= set(front.columns)
    by_trial = {int(r.data.tags[TAG_TRIAL]): r for r in runs}
    for _, row in front.iterrows():
        run = by_trial[int(row.trial)]
        assert row.test_accuracy == pytest.approx(run.data.metrics["best_test_accuracy"])
        assert row["fitness.w_sim"] == pytest.approx(float(run.data.params["fitness.w_sim"]))


@pytest.mark.slow
def test_a_killed_search_run_again_completes_without_repeating_finished_trials(search, parent_cache, store, tmp_path):
    proc = search(n_trials=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = {r.data.tags[TAG_TRIAL]: r.info.run_id for r in runs_in(store)[1]}
    assert sorted(first) == ["0", "1"]
    proc = search(n_trials=4)                                   # continues the same study
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, runs, parents = runs_in(store)
    assert len(parents) == 1 and len(runs) == 4
    assert {r.data.tags[TAG_TRIAL]: r.info.run_id for r in runs if r.data.tags[TAG_TRIAL] in first} == first
    study, names = study_of(tmp_path)
    assert len(names) == 1 and states(study) == ["COMPLETE"] * 4

    # A kill after trial 4's job finished but before the study was told: the trial is RUNNING in
    # the study, and its run FINISHED in MLflow. Rerunning fails the trial, enqueues its parameters
    # again, and the job that runs them finds that run (same config) instead of writing a second.
    name = names[0]
    killed = study.ask(fixed_distributions=study.trials[0].distributions)
    job = run_cli("run.py", *TINY, f"parent.cache_dir={parent_cache}", f"tracking.uri={store}",
                  *[f"{k}={override_value(v)}" for k, v in killed.params.items()],
                  f"++tracking.tags.{TAG_STUDY}={name}", f"++tracking.tags.{TAG_TRIAL}={killed.number}", timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert states(study)[-1] == "RUNNING" and len(runs_in(store)[1]) == 5
    proc = search(n_trials=5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "trial 4 of study" in out and "skipping" in out
    study = study_of(tmp_path)[0]
    assert states(study) == ["COMPLETE"] * 4 + ["FAIL", "COMPLETE"]
    assert study.trials[5].params == killed.params          # the killed trial's parameters, tried again
    assert len(runs_in(store)[1]) == 5                       # ... served by its FINISHED run

    # A kill mid-trial: trial 6 RUNNING and no run of it. Rerunning runs its parameters once.
    killed = study.ask(fixed_distributions=study.trials[0].distributions)
    proc = search(n_trials=6)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = study_of(tmp_path)[0]
    assert states(study) == ["COMPLETE"] * 4 + ["FAIL", "COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[7].params == killed.params
    _, runs, parents = runs_in(store)
    assert len(parents) == 1 and len(runs) == 6
    assert sorted(int(r.data.tags[TAG_TRIAL]) for r in runs) == [0, 1, 2, 3, 4, 7]


@pytest.mark.slow
def test_two_searches_never_share_a_study(search, store, tmp_path):
    assert search(n_trials=1).returncode == 0
    other = search("fitness.w_sim=interval(0, 5)", n_trials=1)
    assert other.returncode == 0, other.stderr[-3000:]
    again = search(n_trials=1)                 # the first search again: its study is complete, nothing runs
    assert again.returncode == 0 and "Launching" not in again.stdout + again.stderr
    _, runs, parents = runs_in(store)
    names = sorted(p.data.tags[TAG_STUDY] for p in parents)
    assert len(set(names)) == 2 and sorted(study_of(tmp_path)[1]) == names
    assert sorted(r.data.tags[TAG_STUDY] for r in runs) == names
    [narrow] = [r for r in runs if r.data.tags["mlflow.parentRunId"] ==
                next(p.info.run_id for p in parents if p.data.params["search.space.fitness.w_sim"] == "float(0, 5)")]
    assert float(narrow.data.params["fitness.w_sim"]) <= 5


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["hydra.sweeper.params=null"], "the search space is empty"),
    (["fitness.w_sim=interval(5, 1)"], "fitness.w_sim=interval(5, 1): low > high"),
    (["hydra.sweeper.directions=[maximize]"], "does not match hydra.sweeper.objectives"),
    (["hydra.sweeper.objectives=[best_val_accuracy,size]"], "'size' is not a metric a run returns"),
    (["hydra.sweeper.sampler.name=cmaes"], "hydra.sweeper.sampler.name='cmaes': one of nsgaii, tpe, random"),
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: an integer >= 1"),
    (["population.sise=interval(2, 4)"], "'population.sise' is not a key of the run's config"),
], ids=["empty-space", "low-above-high", "directions-vs-objectives", "unknown-objective", "unknown-sampler",
        "no-trials", "unknown-key"])
def test_bad_input_fails_in_one_line_before_any_trial(args, message, search, store, tmp_path):
    proc = search(*args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr and proc.stderr.count("error:") == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    _, runs, parents = runs_in(store)
    assert runs == [] and parents == [] and not (tmp_path / "optuna.db").exists()


# ---------------------------------------------------------------- the report (fast)

def test_the_front_is_per_study_and_compared_with_the_baselines_at_its_sizes():
    import pandas as pd

    from experiments.search import front_markdown, front_table

    rows = [  # study, trial, seed, val, size, test
        ("a", "0", 0, 0.80, 0.50, 0.79), ("a", "0", 1, 0.82, 0.60, 0.81),   # trial 0: mean (0.81, 0.55, 0.80)
        ("a", "1", 0, 0.85, 0.70, 0.84),                                     # front: more accurate, larger
        ("a", "2", 0, 0.80, 0.70, 0.90),                                     # dominated by trial 1 (test ignored)
        ("b", "0", 0, 0.70, 0.90, 0.70),                                     # alone in its study: its front
    ]
    trials = pd.DataFrame([{"study": s, "trial": t, "seed": k, "best_val_accuracy": v, "best_compression": c,
                            "best_test_accuracy": a, "run_id": f"{s}{t}{k}"} for s, t, k, v, c, a in rows])
    frontier = pd.DataFrame({"variant": ["l1_prune"] * 2, "size_mean": [0.5, 0.8], "test_accuracy_mean": [0.80, 0.86]})
    reference = pd.DataFrame([{"study": "", "trial": -1, "n_seeds": 10, "best_val_accuracy": 0.84,
                               "best_compression": 0.667, "best_test_accuracy": 0.847, "run_id": ""}])
    front = front_table(trials, {"a00": {"fitness.w_sim": "3.5"}}, frontier, reference)
    searched = front[front.kind == "search front"]
    assert [(s, int(t)) for s, t in zip(searched.study, searched.trial)] == [("a", 0), ("a", 1), ("b", 0)]
    first = searched.iloc[0]
    assert (first["size"], first.val_accuracy, first.test_accuracy, first.n_seeds) == pytest.approx((0.55, 0.81, 0.80, 2))
    assert first["fitness.w_sim"] == "3.5"
    assert first["l1_prune at this size"] == pytest.approx(0.81)          # interpolated at 0.55
    assert pd.isna(searched.iloc[2]["l1_prune at this size"])               # 0.9: outside, not extrapolated
    assert front[front.kind == "paper"].iloc[0]["l1_prune at this size"] == pytest.approx(0.80 + 0.06 * 0.167 / 0.3)
    text = front_markdown(front, {"a": 3, "b": 1}, 0.875)
    assert "study a (3 runs" in text and "| search front | 0 | 0.550 | 0.8100 | 0.8000 | -1.0 | 3.5 |" in text


@pytest.mark.slow
def test_a_search_killed_hard_continues_where_it_stopped(parent_cache, store, tmp_path):
    """SIGKILL the search mid-trial, run the same command again: the study ends with n_trials COMPLETE
    trials, the runs finished before the kill are kept, and every COMPLETE trial has one FINISHED run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    # 300 generations a trial (a few seconds): the kill below lands inside one
    args = [sys.executable, "run.py", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", *TINY,
            "data.train_size=30000", f"parent.cache_dir={parent_cache}", f"tracking.uri={store}"]
    log = open(tmp_path / "search1.log", "w")
    proc = subprocess.Popen([*args, f"hydra.sweep.dir={tmp_path / 'multirun1'}"], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "search1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "never saw a RUNNING trial after a COMPLETE one"
            if "trials complete;" in (tmp_path / "search1.log").read_text():   # the study exists
                now = states(study_of(tmp_path)[0])
                if "COMPLETE" in now and now[-1] == "RUNNING":
                    time.sleep(0.3)                          # into the trial's job
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    before = {r.data.tags[TAG_TRIAL]: r.info.run_id for r in runs_in(store)[1] if r.info.status == "FINISHED"}
    assert states(study_of(tmp_path)[0]).count("RUNNING") == 1

    again = run_cli(*args[1:], f"hydra.sweep.dir={tmp_path / 'multirun2'}", timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    study = study_of(tmp_path)[0]
    assert states(study).count("COMPLETE") == 4 and states(study).count("FAIL") == 1
    _, runs, parents = runs_in(store)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(parents) == 1 and len(finished) == 4
    assert {r.data.tags[TAG_TRIAL]: r.info.run_id for r in finished if r.data.tags[TAG_TRIAL] in before} == before
    by_params = {tuple(sorted((k, float(r.data.params[k])) for k in SPACE_KEYS)) for r in finished}
    assert by_params == {tuple(sorted((k, float(v)) for k, v in t.params.items()))
                         for t in study.trials if t.state.name == "COMPLETE"}


@pytest.mark.slow
@pytest.mark.distributed
def test_trials_run_as_ray_tasks(parent_cache, store, tmp_path):
    """The same sweeper through the Ray launcher (a one-node cluster on 127.0.0.1): 2 trials in one batch."""
    import re
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from conftest import REPO
    from test_scaleout import BIN, free_port, ray_env, start, stop, wait_for

    env = ray_env()
    ray_dir = Path(tempfile.mkdtemp(prefix="ecomp-ray-", dir="/tmp"))
    gcs, ray_log = free_port(), tmp_path / "ray.log"
    head = start([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                  "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_dir}",
                  "--object-store-memory=100000000", f"--ray-client-server-port={free_port()}",
                  f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"], ray_log, env)
    try:
        wait_for(lambda: "Ray runtime started" in ray_log.read_text(), head, ray_log, "ray start", 120)
        proc = subprocess.run(
            [sys.executable, "run.py", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
             "hydra.sweeper.batch_size=2", *TINY, f"parent.cache_dir={parent_cache}", f"tracking.uri={store}",
             f"hydra.sweep.dir={tmp_path / 'multirun'}", "hydra/launcher=ray",
             f"hydra.launcher.ray.init.address=127.0.0.1:{gcs}"],
            cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert len(re.findall(r"\(_run_job pid=\d+\).*torch threads for this job: 1", out)) == 2, out[-4000:]
        _, runs, parents = runs_in(store)
        assert len(parents) == 1 and sorted(r.data.tags[TAG_TRIAL] for r in runs) == ["0", "1"]
        assert states(study_of(tmp_path)[0]) == ["COMPLETE", "COMPLETE"]
    finally:
        stop(head)
        shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_trial_averages_its_seeds(search, store, tmp_path):
    proc = search("hydra.sweeper.seeds_per_trial=2", n_trials=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, runs, _ = runs_in(store)
    assert sorted((r.data.tags[TAG_TRIAL], r.data.tags["seed"]) for r in runs) == [("0", "0"), ("0", "1")]
    [trial] = study_of(tmp_path)[0].trials
    assert trial.values == pytest.approx([sum(r.data.metrics[m] for r in runs) / 2
                                          for m in ("best_val_accuracy", "best_compression")])


@pytest.mark.slow
def test_failed_trials_are_told_fail_and_the_search_stops_after_max_failures(search, store, tmp_path):
    # elite >= population.size (10) composes but fails the run's validation: every trial's job fails
    proc = search("operators.selection.elite=tag(int, interval(12, 14))", "hydra.sweeper.max_failures=2", n_trials=1)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "2 trials failed in this run" in proc.stderr and proc.stderr.count("error:") == 1, proc.stderr[-2000:]
    assert states(study_of(tmp_path)[0]) == ["FAIL", "FAIL"]
    _, runs, [parent] = runs_in(store)
    assert runs == [] and parent.info.status == "FAILED"
