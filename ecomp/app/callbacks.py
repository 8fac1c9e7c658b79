"""Hydra callbacks that make sweeps safe to run in parallel (``hydra.callbacks`` in ``conf/config.yaml``).

:class:`SweepSetup` does, once per ``-m`` sweep and in the launching process,
everything that jobs running side by side must not race on, and sizes each
job's torch thread pool so that parallel jobs do not oversubscribe the cores.
Like ``run.py`` it is glue: the algorithm modules know nothing of it.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ecomp.errors import EcompError
from ecomp.redact import mask

log = logging.getLogger(__name__)

# Config groups whose values shape what is prepared before the jobs start:
# the store (tracking.*), the unpacked data (data.*) and the parent network (parent.*).
SETUP_GROUPS = ("tracking", "data", "parent")


FAILURES_FILE = "failed_jobs.txt"


def record_failure(sweep_dir: str, job: str, exc: BaseException) -> None:
    """Append one line for a failed job to ``<sweep dir>/failed_jobs.txt`` (read at the sweep's end)."""
    path = Path(sweep_dir) / FAILURES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    message = mask(f"{job or '(no overrides)'}: {type(exc).__name__}: {exc}".replace("\n", " "))
    with open(path, "a") as f:   # one short append per line: safe across parallel jobs
        f.write(message[:2000] + "\n")


def available_cores() -> int:
    """CPUs this process may use (affinity mask and, through joblib when installed, cgroup quota)."""
    try:
        from joblib import cpu_count

        return max(1, cpu_count())
    except ImportError:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def joblib_jobs(n_jobs: int | None, cores: int) -> int:
    """How many jobs joblib runs at once for ``n_jobs``: ``-1`` one per core, ``-2`` all cores but
    one (joblib's rule), null or 0 one."""
    if not n_jobs:
        return 1
    return max(1, cores + 1 + n_jobs) if n_jobs < 0 else int(n_jobs)


def threads_per_job(launcher: DictConfig | None, cores: int) -> int | None:
    """Torch threads for one job of a sweep run by ``launcher``, or None to keep torch's default.

    * joblib (``n_jobs=k`` jobs at once on this machine): ``max(1, cores // k)``;
      ``n_jobs=-1`` means one job per core, ``-2`` all cores but one (joblib's rule).
    * Ray: the CPUs each task reserves, ``hydra.launcher.ray.remote.num_cpus``
      (Ray's own default is 1): Ray packs tasks onto nodes by that number, so
      jobs x threads = cores on every node.
    * any other launcher (the basic one runs jobs one after the other): None.
    """
    target = str((launcher or {}).get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        return max(1, cores // joblib_jobs(launcher.get("n_jobs"), cores))
    if target.endswith("RayLauncher"):
        num_cpus = ((launcher.get("ray") or {}).get("remote") or {}).get("num_cpus")
        return max(1, int(num_cpus or 1))
    return None


def setup_configs(config: DictConfig) -> list[DictConfig]:
    """One composed job config per distinct combination of the sweep's ``tracking``/``data``/``parent`` values.

    The config Hydra gives ``on_multirun_start`` leaves every swept key at its
    default, so preparing from it alone would, for ``parent.hidden=[32,32],[64,64]``,
    train a parent no job uses. Swept keys of other groups take their first
    value (so every composed config is one that a job really runs); sweeps
    that cannot be listed (intervals for an optimising sweeper) are left out.
    Falls back to ``[config]`` when the overrides cannot be expanded.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        loader = GlobalHydra.instance().config_loader()
        parser = OverridesParser.create(config_loader=loader)
        axes: list[list[str]] = []
        for ov in parser.parse_overrides(list(config.hydra.overrides.task)):
            if not ov.is_sweep_override():
                axes.append([ov.input_line])
                continue
            if not ov.is_discrete_sweep():
                continue
            key = ov.get_key_element()
            values = [f"{key}={v}" for v in ov.sweep_string_iterator()]
            group = ov.key_or_group.lstrip("+~").split(".")[0]
            axes.append(values if group in SETUP_GROUPS else values[:1])
        return [loader.load_sweep_config(config, list(combo)) for combo in itertools.product(*axes)]
    except Exception as exc:  # noqa: BLE001 - preparing from the defaults is still better than nothing
        log.warning("could not expand the sweep's overrides (%s); preparing for the default config only", exc)
        return [config]


def _makes_own_parent_runs(config: DictConfig) -> bool:
    """The sweeper groups its jobs itself (an Optuna study's parent run): no second parent."""
    return "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower()


def check_ray_address(launcher: DictConfig, timeout: float = 5.0) -> None:
    """Fail in seconds, not after Ray's endless retries, when the Ray head to join does not answer.

    The address is ``hydra.launcher.ray.init.address``, or ``$RAY_ADDRESS`` when
    that is null or ``auto``; ``auto`` with no ``$RAY_ADDRESS`` is left to
    Ray, which fails at once when no cluster was started on this machine.
    Raises ``OSError`` with one line.
    """
    address = (launcher.get("ray") or {}).get("init", {}).get("address")
    if address in (None, "auto"):
        address = os.environ.get("RAY_ADDRESS")
    if not address or "://" in address or ":" not in address:
        return
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise OSError(f"Ray cluster {address!r} does not answer ({exc}); start it with "
                      f"`ray start --head` or fix hydra.launcher.ray.init.address / RAY_ADDRESS") from None


class SweepSetup(Callback):
    """Prepare a sweep once before its jobs start; size each job's thread pool.

    ``on_multirun_start`` runs once, in the process that launches the sweep,
    before any job starts (Hydra calls it before the launcher exists):

    0. under Ray, checks the cluster answers (:func:`check_ray_address`);
    1. reads the config into its run specification (:func:`ecomp.app.spec.build`), so a bad value fails
       once with one line instead of once per job (``device`` is left to the
       jobs under Ray: they may have a GPU where the launching machine has none);
    2. checks the tracking store answers and creates the store (SQLite schema)
       and the experiment (:func:`ecomp.app.store.prepare_store`), so parallel
       jobs never race on the schema migration or on creating the experiment;
    3. unpacks the data and trains or finds the cached parent network
       (:func:`ecomp.app.parents.prepare_parent`), so it is trained once, not once
       per job; jobs then only read ``parent.cache_dir`` and ``data.root``, which
       on a cluster must therefore be on a file system every node sees (or be
       prepared on each node with ``python -m ecomp.app.prepare``).

    It is repeated for every distinct combination of swept ``tracking``,
    ``data`` and ``parent`` values (:func:`setup_configs`). A failure ends the
    sweep before any job starts with ``error: <one line>`` and exit status 2
    (``SystemExit`` passes through Hydra's callback guard, which only turns
    ``Exception`` into a warning).

    ``on_job_start`` runs in each job's own process (a joblib worker, a Ray
    task on any node). When ``threads`` is null it sets
    ``torch.set_num_threads(threads_per_job(...))``, so that jobs x threads =
    cores: with ``hydra/launcher=joblib hydra.launcher.n_jobs=k`` each job
    gets ``max(1, cores // k)`` threads; with ``hydra/launcher=ray`` it gets the
    task's ``num_cpus``. Doing this in the job itself, rather than through
    environment variables such as ``OMP_NUM_THREADS``, works the same for
    every launcher and whatever torch was imported before. An explicit
    ``threads=N`` always wins (``run_experiment`` applies it).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from ecomp.app.cli import fail
        from ecomp.app.caches import Caches
        from ecomp.app.parents import prepare_parent
        from ecomp.app.spec import build
        from ecomp.app.store import prepare_store

        t = time.perf_counter()
        stores, parents, caches = set(), set(), Caches()
        # Ray jobs run on the cluster's nodes: `device=cuda` needs a GPU there, not here.
        remote = str(config.hydra.launcher.get("_target_", "")).endswith("RayLauncher")
        try:
            if remote:
                check_ray_address(config.hydra.launcher)
            for cfg in setup_configs(config):
                spec = build(OmegaConf.merge(cfg, {"device": "cpu"}) if remote else cfg, caches)
                store = (spec.store.uri, spec.store.experiment)
                if spec.store.enabled and store not in stores:
                    uri, exp_id = prepare_store(spec.store)
                    stores.add(store)
                    log.info("tracking store %s ready: experiment %r (id %s)", mask(uri), spec.store.experiment, exp_id)
                    if not _makes_own_parent_runs(config):
                        self._open_parent(config, uri, exp_id, spec.store.experiment)
                parent = (str(spec.data.root), str(spec.parent.cache_dir), spec.parent.recipe.key())
                if parent not in parents:
                    prepare_parent(spec.parent, spec.data, caches)
                    parents.add(parent)
        except (EcompError, OSError) as exc:
            fail(str(exc))
        log.info("sweep prepared in %.1f s: %d store(s), %d parent network(s)",
                 time.perf_counter() - t, len(stores), len(parents))

    def _open_parent(self, config: DictConfig, uri: str, exp_id: str, experiment: str) -> None:
        """The sweep's MLflow parent run in this store (:mod:`ecomp.app.sweep_runs`)."""
        from ecomp.app.sweep_runs import open_sweep_run, sweep_key
        from ecomp.app.store import client_for

        overrides = [str(o) for o in config.hydra.overrides.task]
        command = mask(" ".join(["run.py -m", *overrides]))
        run_id = open_sweep_run(client_for(uri), exp_id, sweep_key(experiment, overrides),
                                str(config.hydra.sweep.dir), command)
        self._parents = [*getattr(self, "_parents", []), (uri, exp_id)]
        log.info("sweep parent run %s in %s", run_id, mask(uri))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("threads") is not None:
            return
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode.name != "MULTIRUN":   # a single run has no jobs beside it
            return
        n = threads_per_job(hc.launcher, available_cores())
        if n is not None:
            import torch

            torch.set_num_threads(n)
            log.info("torch threads for this job: %d (pid %d)", n, os.getpid())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarise the sweep on its MLflow parent run and end that run; report the jobs that failed
        (their MLflow runs are FAILED; the others are kept) and exit 1."""
        path = Path(config.hydra.sweep.dir) / FAILURES_FILE
        if getattr(self, "_parents", None):
            from ecomp.app.store import client_for
            from ecomp.app.sweep_runs import close_sweep_run, sweep_run_id
            from ecomp.app.sweep_summary import summarise_sweep

            sweep_dir = str(config.hydra.sweep.dir)
            for uri, exp_id in self._parents:
                client = client_for(uri)
                run_id = sweep_run_id(client, exp_id, sweep_dir)
                try:       # per-scenario means and stds over seeds, on the sweep's run
                    if run_id is not None:
                        summarise_sweep(client, run_id)
                except Exception as exc:  # noqa: BLE001 - the jobs' runs are stored: only the summary is missing
                    log.warning("could not summarise the sweep on its run %s: %s", run_id,
                                mask(" ".join(str(exc).split()))[:300])
                close_sweep_run(client, exp_id, sweep_dir, failed=path.exists())
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        print(f"error: {len(lines)} job(s) of the sweep failed (the others finished; see {path}):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)
