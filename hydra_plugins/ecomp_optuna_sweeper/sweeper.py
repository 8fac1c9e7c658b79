"""A multi-objective Optuna search as a Hydra sweeper: ``python run.py -m hydra/sweeper=optuna``.

Each batch asks the study for as many trials as the launcher runs at once, launches
them through the configured launcher (basic, joblib, Ray: as any sweep), and tells the
study the trials' objectives, the means of the metrics ``run.py`` returns over the
trial's seeds. A trial whose job failed or returned NaN is told FAIL.

The study lives in a database next to the MLflow store and is named from a hash of
everything that defines the search, so rerunning the same command continues it: trials
a killed process left RUNNING (its ``host:pid`` is gone from this machine) are marked FAIL
and their parameters enqueued again, and ``n_trials`` counts the study's COMPLETE trials,
so only the missing ones run. Several processes may run one study at once. A trial
run again with parameters whose run FINISHED is served by that run (``tracking.skip_finished``).

MLflow: one parent run per study (tags ``optuna_study``, ``optuna_role=study``), found
again on resume; every trial's run is nested under it (``tracking.parent_run``) and tagged
``optuna_study`` and ``optuna_trial`` (``tracking.tags``); its suggested values are in its
params already, as every run logs its config.
"""


import hashlib
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import ECompOptunaSweeperConf  # noqa: F401 - registers hydra/sweeper=optuna
from ._space import Dim, SearchError, dim_of, override_value

log = logging.getLogger(__name__)

TAG_STUDY, TAG_TRIAL, TAG_ROLE = "optuna_study", "optuna_trial", "optuna_role"
OWNER = "owner"                  # trial user attribute: host:pid of the process that asked it
SAMPLERS = ("nsgaii", "tpe", "random")
DIRECTIONS = ("maximize", "minimize")
# The final metrics run.py returns (ecomp.methods.metrics.network_metrics, prefix best_, and the pipeline's own).
METRICS = ("best_val_accuracy", "best_test_accuracy", "best_compression", "best_params_ratio",
           "best_hidden_units", "best_parameters", "best_mean_fitness", "run_seconds")
# Command-line overrides that do not change what a trial computes: not part of the study's identity.
NOT_DEFINING = ("tracking.", "hydra.", "progress", "threads", "parent.cache_dir", "data.root")


def owner() -> str:
    """``host:pid`` of this process: the trials it asks are its own until it tells them."""
    return f"{socket.gethostname()}:{os.getpid()}"


def stale(trial) -> bool:
    """A RUNNING trial nobody will tell: its process ran on this machine and is gone (or it has no owner).
    A trial of a process on another machine is left alone (several processes may share one study)."""
    host, _, pid = str(trial.user_attrs.get(OWNER, "")).rpartition(":")
    if not pid.isdigit():
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid) == os.getpid()          # asked by this very process before (a second sweep() call)


def study_name_for(definition: dict) -> str:
    """``ecomp-<hash>``: the same search gets the same study, any other search another."""
    return "ecomp-" + hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:10]


def parallel_jobs(launcher: DictConfig) -> int:
    """How many jobs the launcher runs at once: joblib's ``n_jobs``, Ray: this machine's cores, else 1."""
    from ecomp.app.callbacks import available_cores, joblib_jobs

    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        return joblib_jobs(launcher.get("n_jobs"), available_cores())
    if target.endswith("RayLauncher"):
        return available_cores()
    return 1


class ECompOptunaSweeper(Sweeper):
    def __init__(self, n_trials: int, seeds_per_trial: int, batch_size: Optional[int], objectives: Sequence[str],
                 directions: Sequence[str], sampler: Any, storage: Optional[str], study_name: Optional[str],
                 max_failures: int, params: Optional[Any]) -> None:
        def plain(x):
            return OmegaConf.to_container(x, resolve=True) if isinstance(x, (DictConfig, ListConfig)) else x

        self.n_trials, self.seeds_per_trial, self.batch_size = n_trials, seeds_per_trial, batch_size
        self.objectives, self.directions = list(plain(objectives) or []), list(plain(directions) or [])
        self.sampler_conf = dict(plain(sampler) or {})
        self.storage, self.study_name, self.max_failures = storage, study_name, max_failures
        self.params = dict(plain(params) or {})
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # ------------------------------------------------------------------ checks, before any trial

    def check_settings(self) -> None:
        for key, value, minimum in (("n_trials", self.n_trials, 1), ("seeds_per_trial", self.seeds_per_trial, 1),
                                    ("max_failures", self.max_failures, 1)):
            if value is None or value < minimum:
                raise SearchError(f"hydra.sweeper.{key}={value!r}: an integer >= {minimum}")
        if self.batch_size is not None and self.batch_size < 1:
            raise SearchError(f"hydra.sweeper.batch_size={self.batch_size!r}: null or an integer >= 1")
        if not self.objectives:
            raise SearchError("hydra.sweeper.objectives is empty: name at least one metric, e.g. [best_val_accuracy]")
        if len(self.directions) != len(self.objectives):
            raise SearchError(f"hydra.sweeper.directions={self.directions} does not match "
                              f"hydra.sweeper.objectives={self.objectives}: one direction per objective")
        for d in self.directions:
            if d not in DIRECTIONS:
                raise SearchError(f"hydra.sweeper.directions: {d!r} is not one of {', '.join(DIRECTIONS)}")
        if len(set(self.objectives)) != len(self.objectives):
            raise SearchError(f"hydra.sweeper.objectives={self.objectives}: an objective is listed twice")
        for m in self.objectives:
            if m not in METRICS:
                raise SearchError(f"hydra.sweeper.objectives: {m!r} is not a metric a run returns "
                                  f"(one of {', '.join(METRICS)})")
            if "test" in m:
                raise SearchError(f"hydra.sweeper.objectives: {m!r}: the test set is kept for the report; "
                                  f"search on best_val_accuracy")
        name = self.sampler_conf.get("name")
        if name not in SAMPLERS:
            raise SearchError(f"hydra.sweeper.sampler.name={name!r}: one of {', '.join(SAMPLERS)}")
        if name == "nsgaii" and (self.sampler_conf.get("population_size") or 0) < 2:
            raise SearchError(f"hydra.sweeper.sampler.population_size={self.sampler_conf.get('population_size')!r}: "
                              f"an integer >= 2")

    def search_space(self, arguments: list[str]) -> tuple[dict[str, Dim], list[str]]:
        """``(dims, fixed)``: the space (``hydra.sweeper.params``, then the command line's sweeps) and the
        command line's plain overrides, which also take their key out of the space."""
        assert self.hydra_context is not None and self.config is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        dims: dict[str, Dim] = {}
        for key, text in self.params.items():
            if text is None:
                continue
            try:
                ov = parser.parse_overrides([f"{key}={text}"])[0]
            except Exception as exc:  # noqa: BLE001 - Hydra's grammar errors span lines
                raise SearchError(f"hydra.sweeper.params: {key}={text!r}: {str(exc).splitlines()[0]}") from None
            if not ov.is_sweep_override():
                raise SearchError(f"hydra.sweeper.params: {key}={text!r} is one value, not a range or choice")
            dims[key] = dim_of(key, ov.value())
        fixed = []
        for ov in parser.parse_overrides(arguments):
            key = ov.get_key_element()
            if ov.is_sweep_override():
                dims[key] = dim_of(key, ov.value())
            else:
                dims.pop(key, None)
                fixed.append(ov.input_line)
        if not dims:
            raise SearchError("the search space is empty: hydra.sweeper.params has no key and the command line "
                              "sweeps none (e.g. 'fitness.w_sim=interval(0, 10)')")
        for key in dims:
            if OmegaConf.select(self.config, key, default="<missing>") == "<missing>" or key.startswith("hydra."):
                raise SearchError(f"search space: {key!r} is not a key of the run's config")
        if "seed" in dims and self.seeds_per_trial > 1:
            raise SearchError("search space: seed is searched and hydra.sweeper.seeds_per_trial > 1; choose one")
        return dims, fixed

    def definition(self, dims: dict[str, Dim], fixed: list[str]) -> dict:
        """Everything that defines the search (and so names its study); not n_trials, storage, launcher."""
        sampler = {k: v for k, v in self.sampler_conf.items()
                   if k != "population_size" or self.sampler_conf.get("name") == "nsgaii"}
        return {"space": {k: d.spec() for k, d in sorted(dims.items())}, "objectives": self.objectives,
                "directions": self.directions, "sampler": sampler, "seeds_per_trial": self.seeds_per_trial,
                "fixed": sorted(o for o in fixed if not o.lstrip("+~").startswith(NOT_DEFINING))}

    # ------------------------------------------------------------------ the study

    def storage_url(self) -> str:
        """``hydra.sweeper.storage``, else ``sqlite:///<folder of the MLflow SQLite store>/optuna.db``."""
        if self.storage:
            return self.storage
        from ecomp.app.provenance import repo_root
        from ecomp.app.spec import store_spec

        uri = store_spec(self.config).uri
        folder = Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///") else repo_root() / "mlruns"
        return f"sqlite:///{folder / 'optuna.db'}"

    @staticmethod
    def open_storage(url: str):
        from optuna.storages import JournalStorage, RDBStorage
        from optuna.storages.journal import JournalFileBackend

        if url.startswith("journal:"):
            path = url[len("journal:"):]
            path = path[2:] if path.startswith("//") else path
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        if "://" in url:
            from sqlalchemy.exc import IntegrityError, OperationalError

            kwargs = {}
            if url.startswith("sqlite:///"):
                Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
                kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}}
            for attempt in range(3):
                try:
                    return RDBStorage(url, **kwargs)
                except (IntegrityError, OperationalError):   # another process is creating the same schema
                    if attempt == 2:
                        raise
                    time.sleep(1.0)
        raise SearchError(f"hydra.sweeper.storage={url!r}: sqlite:///path.db, journal:///path.log or a database URL")

    def make_sampler(self, offset: int):
        """The sampler, seeded with ``seed + offset`` (``offset`` = trials the study already has, so that
        a resumed search does not propose again what the first process proposed)."""
        import optuna

        s = self.sampler_conf
        seed = None if s.get("seed") is None else int(s["seed"]) + offset
        if s["name"] == "nsgaii":
            return optuna.samplers.NSGAIISampler(population_size=int(s["population_size"]), seed=seed)
        if s["name"] == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        return optuna.samplers.RandomSampler(seed=seed)

    def open_study(self, name: str, definition: dict, url: str):
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        directions = list(self.directions)
        study = optuna.create_study(study_name=name, storage=self.open_storage(url), directions=directions,
                                    sampler=self.make_sampler(0), load_if_exists=True)
        text = json.dumps(definition, sort_keys=True)
        stored = study.user_attrs.get("definition")
        if stored is None:
            study.set_user_attr("definition", text)
        elif stored != text:
            raise SearchError(f"study {name!r} in {url} was made by another search (hydra.sweeper.study_name is "
                              f"taken); leave study_name null or pick another")
        if [d.name.lower() for d in study.directions] != directions:
            raise SearchError(f"study {name!r} in {url} has other directions; pick another study_name")
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not stale(t):
                log.info("trial %d of study %s is RUNNING in %s: left to it", t.number, name, t.user_attrs[OWNER])
                continue
            # left by a killed process: failed, and its parameters tried again
            log.warning("trial %d of study %s was left RUNNING by %s, which is gone: marked FAIL, its parameters "
                        "enqueued again", t.number, name, t.user_attrs.get(OWNER, "a process"))
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number}, skip_if_exists=False)
        study.sampler = self.make_sampler(len(study.get_trials(deepcopy=False)))
        return study

    # ------------------------------------------------------------------ MLflow: one parent run per study

    def parent_run(self, name: str, definition: dict, url: str) -> Optional[str]:
        cfg = self.config
        if not cfg.tracking.enabled:
            return None
        from ecomp.app.spec import store_spec
        from ecomp.app.store import prepare_store
        from ecomp.app.store import client_for

        uri, exp_id = prepare_store(store_spec(cfg))
        client = client_for(uri)
        found = client.search_runs([exp_id], f"tags.{TAG_STUDY} = '{name}' and tags.{TAG_ROLE} = 'study'",
                                   max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            log.info("study %s: continuing under MLflow parent run %s", name, run_id)
        else:
            note = f"Optuna study {name}: {json.dumps(definition)}"
            run_id = client.create_run(exp_id, run_name=f"search-{name}",
                                       tags={TAG_STUDY: name, TAG_ROLE: "study", "mlflow.note.content": note}
                                       ).info.run_id
            from mlflow.entities import Param

            params = {"search.objectives": ",".join(self.objectives), "search.directions": ",".join(self.directions),
                      "search.seeds_per_trial": self.seeds_per_trial, "search.fixed": " ".join(definition["fixed"]),
                      **{f"search.sampler.{k}": v for k, v in definition["sampler"].items()},
                      **{f"search.space.{k}": v for k, v in definition["space"].items()}}
            client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
            log.info("study %s: MLflow parent run %s", name, run_id)
        client.set_tag(run_id, "optuna_storage", url)
        client.set_tag(run_id, "n_trials", str(self.n_trials))
        return run_id

    def close_parent(self, run_id: Optional[str], study, status: str) -> None:
        if run_id is None:
            return
        from optuna.trial import TrialState

        from ecomp.app.spec import store_spec
        from ecomp.app.store import client_for

        client = client_for(store_spec(self.config).uri)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        client.log_metric(run_id, "complete_trials", states.count(TrialState.COMPLETE))
        client.log_metric(run_id, "failed_trials", states.count(TrialState.FAIL))
        client.set_terminated(run_id, status=status)

    # ------------------------------------------------------------------ the search

    def job_overrides(self, fixed: list[str], dims: dict[str, Dim], trial, values: dict, name: str,
                      parent: Optional[str]) -> list[list[str]]:
        jobs = []
        base_seed = int(self.config.seed)
        keep = [o for o in fixed if self.seeds_per_trial == 1 or o.split("=", 1)[0].lstrip("+~") != "seed"]
        for s in range(self.seeds_per_trial):
            ov = [*keep, *(f"{k}={override_value(values[k])}" for k in dims)]
            if self.seeds_per_trial > 1:
                ov.append(f"seed={base_seed + s}")
            ov += [f"++tracking.tags.{TAG_STUDY}={name}", f"++tracking.tags.{TAG_TRIAL}={trial.number}",
                   f"hydra.sweep.subdir=trial{trial.number:04d}" + (f"-seed{base_seed + s}"
                                                                    if self.seeds_per_trial > 1 else "")]
            if parent:
                ov.append(f"tracking.parent_run={parent}")
            jobs.append(ov)
        return jobs

    def objective_values(self, results: Sequence) -> Optional[list[float]]:
        """The trial's objectives (means over its seeds), or None when a job failed or gave NaN."""
        per_job = []
        for r in results:
            if r.status != JobStatus.COMPLETED or not isinstance(r._return_value, dict):
                return None
            per_job.append([float(r._return_value.get(m, math.nan)) for m in self.objectives])
        means = [sum(col) / len(col) for col in zip(*per_job)]
        return None if any(not math.isfinite(v) for v in means) else means

    def sweep(self, arguments: list[str]) -> Any:
        from optuna.trial import TrialState

        from ecomp.app.cli import fail

        assert self.config is not None and self.launcher is not None
        try:
            self.check_settings()
            dims, fixed = self.search_space(arguments)
            definition = self.definition(dims, fixed)
            name = self.study_name or study_name_for(definition)
            url = self.storage_url()
            study = self.open_study(name, definition, url)
        except SearchError as exc:
            fail(str(exc))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parent = self.parent_run(name, definition, url)

        def complete() -> int:
            return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

        per_batch = self.batch_size or max(1, parallel_jobs(self.config.hydra.launcher) // self.seeds_per_trial)
        log.info("study %s in %s: %d of %d trials complete; %d trial(s) x %d seed(s) per batch", name, url,
                 complete(), self.n_trials, per_batch, self.seeds_per_trial)
        returns, failures, status = [], 0, "KILLED"
        try:
            while (done := complete()) < self.n_trials:
                trials = [study.ask() for _ in range(min(per_batch, self.n_trials - done))]
                for t in trials:
                    t.set_user_attr(OWNER, owner())
                values = [{k: d.suggest(t) for k, d in dims.items()} for t in trials]
                jobs = [self.job_overrides(fixed, dims, t, v, name, parent) for t, v in zip(trials, values)]
                batch = [ov for trial_jobs in jobs for ov in trial_jobs]
                self.validate_batch_is_legal(batch)
                results = list(self.launcher.launch(batch, initial_job_idx=self.job_idx))
                self.job_idx += len(batch)
                returns.append(results)
                for i, t in enumerate(trials):
                    own = results[i * self.seeds_per_trial:(i + 1) * self.seeds_per_trial]
                    scores = self.objective_values(own)
                    if scores is None:
                        study.tell(t, state=TrialState.FAIL)
                        failures += 1
                        log.warning("trial %d failed (%d failure(s) so far)", t.number, failures)
                    else:
                        study.tell(t, scores)
                        log.info("trial %d: %s", t.number, ", ".join(
                            f"{m}={v:.4f}" for m, v in zip(self.objectives, scores)))
                if failures >= self.max_failures:
                    status = "FAILED"
                    fail(f"study {name}: {failures} trials failed in this run (hydra.sweeper.max_failures="
                         f"{self.max_failures}); {complete()} of {self.n_trials} complete; see the jobs' logs")
            status = "FINISHED"
        except Exception:
            status = "FAILED"
            raise
        finally:                  # KILLED on Ctrl-C; its asked trials stay RUNNING, and are retried on resume
            self.close_parent(parent, study, status)
        front = study.best_trials
        log.info("study %s: %d complete trials, %d on the Pareto front: %s", name, complete(), len(front),
                 ", ".join(f"#{t.number} {[round(v, 4) for v in t.values]}" for t in front))
        return returns
