"""Run EComp: ``python run.py fitness=120 seed=3`` or ``python run.py -m fitness=glob(*) seed=range(10)``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# Bytecode from .cache/pycache, where `make setup` compiles it (the Makefile's PYTHONPYCACHEPREFIX),
# unless the caller chose a place. Where writing bytecode at import time is off
# (PYTHONDONTWRITEBYTECODE, set in many containers and CI images), every process, its tracking
# helper and each sweep worker would otherwise compile torch's, Hydra's and MLflow's sources anew:
# seconds per process (benchmarks/README.md, 2026-12-06 evening). Set before this project's imports.
if sys.pycache_prefix is None:
    sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"] = str(Path(__file__).resolve().parent / ".cache" / "pycache")

from ecomp.app.cli import fail  # noqa: E402
from ecomp.app.credentials import take_passwords  # noqa: E402
from ecomp.app.tracker_process import prestart  # noqa: E402
from ecomp.errors import EcompError  # noqa: E402

if __name__ == "__main__":
    try:
        sys.argv[1:] = take_passwords(sys.argv[1:])     # before Hydra writes any of it down
    except EcompError as exc:
        fail(str(exc))
    prestart(sys.argv[1:])      # the tracking helper imports MLflow while this process imports torch

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ecomp.app.caches import Caches  # noqa: E402
from ecomp.app.callbacks import record_failure  # noqa: E402
from ecomp.app.cli import check_composition, check_overrides, check_parent_choice  # noqa: E402
from ecomp.app.config import register_configs  # noqa: E402
from ecomp.app.pipeline import run_experiment, scenario_name  # noqa: E402

log = logging.getLogger("ecomp")
# What the jobs of this process share (the dataset read, a checkpoint read, the parent's test
# accuracy, the splits' digests): owned here, by the entry point, and handed to every run.
CACHES = Caches()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, float] | float:
    """One run; returns its final metrics (what an optimising sweeper reads), NaN when it failed."""
    hc = HydraConfig.get()
    sweep = hc.sweep.dir if hc.mode.name == "MULTIRUN" else None
    try:
        check_parent_choice(hc.runtime.choices.get("parent"), cfg)
        result = run_experiment(cfg, scenario=scenario(cfg, hc.runtime.choices.get("fitness")), sweep=sweep,
                                caches=CACHES)
    except EcompError as exc:
        if sweep is None:
            fail(str(exc))
        record_failure(sweep, hc.job.override_dirname, exc)
        return float("nan")
    except Exception as exc:  # noqa: BLE001 - in a sweep, one job's crash must not end the others
        if sweep is None:
            raise
        log.exception("job %s failed", hc.job.override_dirname)
        record_failure(sweep, hc.job.override_dirname, exc)
        return float("nan")
    return dict(result.metrics)


def fast_exit() -> None:
    import atexit
    import os

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def scenario(cfg: DictConfig, choice: str | None) -> str | None:
    """The fitness file's name when the weights are that file's (``121``), else the weights
    themselves (``0.83_4.1_1.2``, e.g. a search's trial): a run never claims a scenario it is not."""
    if choice is not None and scenario_name(cfg) == choice:
        return choice
    f = cfg.fitness
    return "_".join(f"{w:.3g}" for w in (f.w_acc, f.w_sim, f.w_comp))


if __name__ == "__main__":
    register_configs()                                  # the schema conf/config.yaml names first
    sys.argv[1:] = check_overrides(sys.argv[1:])
    check_composition(sys.argv[1:])
    main()
    if not any(a in ("-m", "--multirun") or a.endswith("hydra.mode=MULTIRUN") for a in sys.argv[1:]):
        # One run, finished and closed (its MLflow run too): skip the interpreter's teardown of
        # torch, MLflow and pandas, which takes about a second, after the exit handlers ran and
        # every stream was flushed. A sweep exits normally (its launcher's workers shut down).
        fast_exit()
