"""``hydra/sweeper=optuna``: the search's settings and its default search space (Hydra's ConfigStore).

Imported by Hydra's plugin scan at every start, so it imports nothing heavy; no
``from __future__ import annotations`` in this package: the scan runs a module before it is in
``sys.modules``, where dataclasses cannot resolve string annotations.
"""


from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    name: str = "nsgaii"           # nsgaii (multi-objective genetic) | tpe | random
    seed: Optional[int] = 0        # the sampler's seed (part of the study's identity)
    population_size: int = 20      # nsgaii: trials per generation (60 trials = 3 generations)


@dataclass
class ECompOptunaSweeperConf:
    _target_: str = "hydra_plugins.ecomp_optuna_sweeper.sweeper.ECompOptunaSweeper"
    n_trials: int = 60             # COMPLETE trials the study ends with (a rerun runs only the missing ones)
    seeds_per_trial: int = 1       # k > 1: each trial runs seed=0..k-1 and is scored by the means
    batch_size: Optional[int] = None   # trials launched at once; null: joblib's n_jobs // seeds_per_trial, else 1
    # Metrics a run returns (run.py returns its final metrics), and whether to maximize or minimize each.
    objectives: List[str] = field(default_factory=lambda: ["best_val_accuracy", "best_compression"])
    directions: List[str] = field(default_factory=lambda: ["maximize", "minimize"])
    sampler: SamplerConf = field(default_factory=SamplerConf)
    storage: Optional[str] = None  # null: sqlite next to the MLflow store (mlruns/optuna.db);
                                   # sqlite:///path.db, or journal:///path.log (several processes)
    study_name: Optional[str] = None   # null: derived from everything that defines the search
    max_failures: int = 10         # failed trials (NaN or a crash) in one invocation before it gives up
    # The search space, in Hydra's sweep syntax: interval(low, high) (float, tag(log, ...) for a log
    # scale, tag(int, ...) for integers), choice(a, b, ...), range(start, stop, step). A sweep on the
    # command line (`'fitness.w_sim=interval(0, 5)'`) replaces or adds a key; a plain value
    # (`fitness.w_acc=1`) takes it out of the search.
    params: Optional[Dict[str, str]] = field(default_factory=lambda: {
        "fitness.w_acc": "interval(0, 2)",
        "fitness.w_sim": "interval(0, 10)",
        "fitness.w_comp": "interval(0, 2)",
        "operators.mutation.rate": "interval(0, 0.1)",
        "operators.selection.temperature": "tag(log, interval(0.05, 2))",
        "operators.selection.elite": "choice(0, 2, 4)",
    })


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=ECompOptunaSweeperConf,
                             provider="ecomp_optuna_sweeper")
