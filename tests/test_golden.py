"""The paper's configuration keeps its numbers: every scenario's history against a recorded golden.

The parent is a file (``tests/data/golden_parent.pt``: the tiny 784-32-32-10 parent, trained once
and kept, so no training rounding enters), the data real FashionMNIST, the run the whole pipeline
(``run_experiment``) at tiny sizes: 10 individuals, 2 epochs of 5 batches, so 11 generations, for
each of the seven scenarios. On every build and both similarity kernel paths (no skip):

* accuracy and compression records, and the returned network's test accuracy and size, exactly
  (they are counts);
* similarity and fitness records within ``RTOL`` (relative) + ``ATOL``: kernels and builds round
  the float32 similarity differently in the last bits;
* all of it bit for bit where the torch build and the kernels are the recorded ones.

Recording (after a change that is meant to change the numbers, and only then):
``python tests/test_golden.py --record``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from ecomp.methods.metrics import MACHINE_READINGS

DATA = Path(__file__).parent / "data"
PARENT = DATA / "golden_parent.pt"
GOLDEN = DATA / "golden_histories.json"
SCENARIOS = ("001", "020", "100", "021", "120", "101", "121")
SETTINGS = ["population.size=10", "data.train_size=500", "data.batch_size=100", "data.test_size=1000",
            "data.val_size=500", "evolution.epochs=2", "progress=false", "tracking.enabled=false",
            "parent=checkpoint", f"parent.path={PARENT}"]
COUNTS = ("accuracy", "compression")
FINAL_COUNTS = ("best_test_accuracy", "best_val_accuracy", "best_compression", "best_hidden_units",
                "best_parameters", "parent_test_accuracy")
RTOL, ATOL = 1e-4, 1e-6


def run(scenario: str, kernels: str, *extra: str) -> tuple[list[dict], dict, str]:
    """``(history, final metrics, kernels used)`` of one tiny run of ``scenario``, seed 3."""
    from hydra import compose, initialize_config_dir

    from ecomp.app.cli import CONF_DIR, check_overrides
    from ecomp.app.config import register_configs, resolve_backend
    from ecomp.app.pipeline import run_experiment

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=check_overrides(
            [*SETTINGS, f"fitness={scenario}", "seed=3", f"similarity.kernels={kernels}", *extra]))
    result = run_experiment(cfg)
    return result.history, result.metrics, resolve_backend(cfg).kernels


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)


def check(history: list[dict], metrics: dict, golden: dict, exact: bool) -> None:
    assert len(history) == len(golden["history"]) == 11
    if exact:
        assert history == golden["history"]
        assert {k: metrics[k] for k in golden["metrics"]} == golden["metrics"]
        return
    for g, (rec, want) in enumerate(zip(history, golden["history"])):
        for key, value in want.items():
            if key.split("_")[0] in COUNTS:
                assert rec[key] == value, (g, key)
            else:
                assert close(rec[key], value), (g, key, rec[key], value)
    for key in FINAL_COUNTS:
        assert metrics[key] == golden["metrics"][key], key
    assert close(metrics["best_mean_fitness"], golden["metrics"]["best_mean_fitness"])


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("kernels", ["auto", "torch"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_keeps_its_golden_history(golden, scenario, kernels):
    history, metrics, used = run(scenario, kernels)
    exact = torch.__version__ == golden["torch"] and used == golden["kernels"]
    check(history, metrics, golden["scenarios"][scenario], exact)


def test_the_selection_levers_at_their_defaults_are_the_paper(golden):
    """Naming every selection lever at its default value changes nothing, bit for bit."""
    levers = ["operators.selection.kind=roulette", "operators.selection.temperature=1.0",
              "operators.selection.elite=0", "operators.selection.tournament_size=2"]
    (plain, plain_metrics, _), (named, named_metrics, _) = run("121", "torch"), run("121", "torch", *levers)
    assert plain == named
    assert {k: v for k, v in plain_metrics.items() if k not in MACHINE_READINGS} == \
        {k: v for k, v in named_metrics.items() if k not in MACHINE_READINGS}
    check(named, named_metrics, golden["scenarios"]["121"], exact=False)


def test_the_golden_records_are_real(golden):
    """The golden file holds what the test compares: 7 scenarios of 11 generations that evolve
    (each history changes, and no two scenarios share one), on a parent file that reads back."""
    from ecomp.nets.checkpoint import read_checkpoint

    assert sorted(golden["scenarios"]) == sorted(SCENARIOS)
    layers, _ = read_checkpoint(PARENT)
    assert [w.shape[0] for w, _ in layers] == [32, 32, 10]
    for scenario, rec in golden["scenarios"].items():
        h = rec["history"]
        assert len(h) == 11 and h[0] != h[-1], scenario
        assert h[0]["compression_mean"] == pytest.approx(0.56875)    # the L1 initial population, 10 networks
    finals = [json.dumps(rec["history"][-1], sort_keys=True) for rec in golden["scenarios"].values()]
    assert len(set(finals)) == len(SCENARIOS)


def record() -> None:
    out = {"torch": torch.__version__, "scenarios": {}}
    for scenario in SCENARIOS:
        history, metrics, used = run(scenario, "auto")
        out["kernels"] = used
        out["scenarios"][scenario] = {"history": history,
                                      "metrics": {k: metrics[k] for k in (*FINAL_COUNTS, "best_mean_fitness")}}
        print(scenario, metrics["best_test_accuracy"], metrics["best_compression"])
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_golden.py --record")
    record()
