"""The width searches' tables (experiments/widths_verdict.py) from a hand-made MLflow store whose
differences are known in advance, through figures.py's report and the script."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from ecomp.methods.l1_finetune import L1Finetune
from ecomp.methods.width_search import WidthSearch
from experiments import figures
from experiments.widths_verdict import DEFAULT_EPOCHS, without_macs
from test_figures import compose_cfg
from test_verdict import new_store

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(10)
KEEPS = (0.6, 0.7, 0.8)


def l1(macs, seed):
    return 0.5 + 0.5 * macs + 0.001 * seed


def search_gain(seed):                 # the search's lead over l1_finetune at its MACs: mean +1.1 points
    return 0.01 + 0.002 * (seed % 2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("widths")
    uri, client, exp_id = new_store(root)
    now = int(time.time() * 1000)

    def run(kind, tags, macs, acc, start=now, **metrics):
        r = client.create_run(exp_id, start_time=start, tags={k: str(v) for k, v in tags.items()})
        client.log_batch(r.info.run_id, params=[Param("parent.kind", kind)], metrics=[
            Metric(k, float(v), start, 0) for k, v in {
                "best_test_accuracy": acc, "best_compression": macs ** 0.5, "best_macs_ratio": macs,
                "best_val_accuracy": 0.5, "parent_test_accuracy": 0.9, "run_seconds": 10.0, **metrics}.items()])
        client.set_terminated(r.info.run_id, "FINISHED")

    cost = {"search_seconds": 7.0, "finetune_seconds": 3.0, "run_seconds": 12.0}
    for seed in SEEDS:
        for keep in KEEPS:
            run("resnet", {"method": "l1_finetune", "keep": keep, "variant": "l1_finetune", "seed": seed},
                keep ** 2, l1(keep ** 2, seed))
        macs = 0.5 + 0.004 * (seed - 5)          # within the default tolerance of 0.5
        run("resnet", {"method": "random_search", "score": "adaptive_bn", "macs": 0.5, "seed": seed,
                       "variant": "random_search (score=adaptive_bn, macs=0.5)"},
            macs, l1(macs, seed) + search_gain(seed), **cost)
        # fine-tuned two epochs: no l1_finetune of two epochs in the store, so never compared
        run("resnet", {"method": "evolve_widths", "score": "adaptive_bn", "macs": 0.5, "epochs": 2, "seed": seed,
                       "variant": "evolve_widths (epochs=2, score=adaptive_bn, macs=0.5)"},
            macs, 0.99, **cost)
        # EComp 101 + 1 epoch at 0.30-0.39 of the MACs, and a search at each seed's EComp MACs: +5 points
        e = 0.3 + 0.01 * seed + 1e-5
        run("resnet", {"method": "ecomp", "scenario": "101", "finetune_epochs": 1, "variant": "101+ft1",
                       "seed": seed}, e, 0.70)
        label = round(e, 4)
        run("resnet", {"method": "random_search", "score": "adaptive_bn", "macs": label, "tolerance": 0.01,
                       "seed": seed, "variant": f"random_search (macs={label:g}, tolerance=0.01, score=adaptive_bn)"},
            label + 0.002, 0.75, **cost)
        # a CNN's search in the same store: never paired with the ResNet's runs
        run("cnn", {"method": "random_search", "score": "adaptive_bn", "macs": 0.5, "seed": seed,
                    "variant": "random_search (score=adaptive_bn, macs=0.5)"}, 0.5, 0.01, **cost)
    # an older duplicate of one search run, with a wrong number: the newest run wins
    run("resnet", {"method": "random_search", "score": "adaptive_bn", "macs": 0.5, "seed": 0,
                   "variant": "random_search (score=adaptive_bn, macs=0.5)"}, 0.5, 0.0, start=now - 86_400_000, **cost)
    return {"uri": uri, "root": root}


@pytest.fixture(scope="module")
def tables(store):
    out = store["root"] / "report"
    files = figures.build_report(compose_cfg(store["uri"], out, "report.parent=resnet", "report.size=macs"))
    assert out / "widths.md" in files and out / "widths.csv" in files
    table = pd.read_csv(out / "widths.csv")
    return {"budget": table[table.table == "budget"].set_index("search"),
            "ecomp": table[table.table == "ecomp"].set_index("search"), "md": (out / "widths.md").read_text()}


def test_a_search_is_paired_with_l1_finetune_at_its_own_macs(tables):
    row = tables["budget"].loc["random_search (score=adaptive_bn, macs=0.5)"]
    assert row["against"] == "l1_finetune" and row["n_pairs"] == 10 and row["n_runs"] == 10
    assert row["difference"] == pytest.approx(sum(search_gain(k) for k in SEEDS) / 10)
    assert row["ci_low"] <= row["difference"] <= row["ci_high"] and row["ci_low"] == pytest.approx(0.01, abs=1e-3)
    assert row["macs_mean"] == pytest.approx(0.5 - 0.002)
    assert (row["search_seconds"], row["finetune_seconds"], row["other_run_seconds"]) == (7.0, 3.0, 10.0)


def test_only_searches_fine_tuned_alike_are_compared(tables):
    assert list(tables["budget"].index) == ["random_search (score=adaptive_bn, macs=0.5)"]


def test_a_search_at_each_seeds_ecomp_macs_is_paired_with_fine_tuned_ecomp(tables):
    (family,) = tables["ecomp"].index
    assert family == "random_search (tolerance=0.01, score=adaptive_bn)"
    row = tables["ecomp"].loc[family]
    assert row["against"] == "EComp 101+ft1" and row["n_pairs"] == 10
    assert row["difference"] == pytest.approx(0.05) and row["ci_low"] == pytest.approx(0.05)
    assert "| random_search (tolerance=0.01, score=adaptive_bn) | EComp 101+ft1 | 10 of 10 |" in tables["md"]


def test_the_searches_and_l1_finetune_are_fine_tuned_alike_by_default():
    assert (WidthSearch.epochs, WidthSearch.lr) == (L1Finetune.epochs, L1Finetune.lr)
    assert str(WidthSearch.epochs) == DEFAULT_EPOCHS


def test_a_variants_macs_label_is_dropped_wherever_it_sits():
    assert without_macs("random_search (macs=0.2231, tolerance=0.01, score=cka)") == \
        "random_search (tolerance=0.01, score=cka)"
    assert without_macs("evolve_widths (score=adaptive_bn, macs=0.5)") == "evolve_widths (score=adaptive_bn)"
    assert without_macs("random_search") == "random_search"


def test_the_script_prints_the_tables_and_each_seeds_overrides(store):
    script = [sys.executable, str(ROOT / "experiments" / "widths_verdict.py"), "--store", store["uri"]]
    done = subprocess.run([*script, "--parent", "resnet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| random_search (score=adaptive_bn, macs=0.5) | l1_finetune | 10 of 10 | 0.498 |" in done.stdout
    done = subprocess.run([*script, "--parent", "resnet", "--ecomp-macs", "101+ft1"], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.splitlines()[:2] == ["seed=0 method.macs=0.3", "seed=1 method.macs=0.31"]
    done = subprocess.run([*script, "--parent", "vgg"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1] == (
        f"error: --parent=vgg: no FINISHED runs of that parent kind in {store['uri']} (found: cnn, resnet)")
