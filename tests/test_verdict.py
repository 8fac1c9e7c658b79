"""The frontier and the verdict from a hand-made MLflow store whose numbers are known in advance."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from scipy import stats

from experiments import figures
from experiments.report_data import load_all_runs
from experiments.verdict import accuracy_at, bootstrap_ci, frontier_table, mean_ci, split_runs, verdict_table
from test_figures import compose_cfg

SEEDS = range(10)
KEEPS = (0.2, 0.5, 0.8)


def log(client, exp_id, tags, metrics, start):
    run = client.create_run(exp_id, start_time=start, tags={k: str(v) for k, v in tags.items()})
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), start, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, "FINISHED")


def finetuned(size, seed):
    return 0.70 + 0.2 * size + 0.001 * seed


def pruned(size, seed):
    return 0.5 + 0.5 * size          # deterministic: the same for every seed


def new_store(root) -> tuple[str, MlflowClient, str]:
    """``(uri, client, experiment id)`` of an empty SQLite store in ``root`` with experiment ``ecomp``."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("ecomp", artifact_location=(root / "artifacts").as_uri())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri, client, exp_id = new_store(tmp_path_factory.mktemp("verdict"))
    t = int(time.time() * 1000)
    for seed in SEEDS:
        for keep in KEEPS:
            for method, f in (("l1_finetune", finetuned), ("l1_prune", pruned)):
                log(client, exp_id, {"method": method, "keep": keep, "seed": seed},
                    {"best_test_accuracy": f(keep, seed), "best_compression": keep, "best_val_accuracy": 0.5,
                     "parent_test_accuracy": 0.9}, t)
        for variant, tags, size, acc in (("121", {}, 0.65, 0.8013 + 0.002 * seed),
                                         ("121+ft1", {"finetune_epochs": 1}, 0.65, 0.86 + 0.001 * seed),
                                         ("001", {}, 0.1, 0.6),
                                         # two runs below the baselines' sizes, eight inside
                                         ("101", {}, 0.1 if seed < 2 else 0.5, 0.3 if seed < 2 else 0.9)):
            log(client, exp_id, {"method": "ecomp", "scenario": variant.split("+")[0], "seed": seed, **tags},
                {"best_test_accuracy": acc, "best_compression": size, "parent_test_accuracy": 0.9,
                 "accuracy_mean": 0.5, "compression_mean": size, "similarity_mean": 0.1}, t)
    # an older duplicate of one baseline cell, with a wrong number: the newest run wins
    log(client, exp_id, {"method": "l1_prune", "keep": 0.5, "seed": 0},
        {"best_test_accuracy": 0.1, "best_compression": 0.5, "parent_test_accuracy": 0.9}, t - 86_400_000)
    return uri


@pytest.fixture(scope="module")
def tables(store):
    runs = load_all_runs(store, "ecomp")
    ecomp, baselines = split_runs(runs)
    baselines = baselines.sort_values("start_time", ascending=False).drop_duplicates(["variant", "keep", "seed"])
    return ecomp, baselines, verdict_table(ecomp, baselines, ["121", "001"]).set_index(["ecomp", "baseline"])


def test_runs_are_read_as_variants(store):
    runs = load_all_runs(store, "ecomp")
    assert set(runs.variant) == {"l1_finetune", "l1_prune", "121", "121+ft1", "001", "101"}
    assert len(runs) == 10 * (6 + 4) + 1


def test_paired_difference_and_its_bootstrap_interval(tables):
    _, _, v = tables
    row = v.loc[("121", "l1_finetune")]
    diffs = np.array([(0.8013 + 0.002 * k) - finetuned(0.65, k) for k in SEEDS])
    assert row.n_pairs == 10 and row.difference == pytest.approx(diffs.mean(), abs=1e-12)
    assert row.baseline_accuracy == pytest.approx(np.mean([finetuned(0.65, k) for k in SEEDS]), abs=1e-12)
    ci = stats.bootstrap((diffs,), np.mean, n_resamples=9_999, method="BCa", rng=np.random.default_rng(0))
    assert (row.ci_low, row.ci_high) == pytest.approx(tuple(ci.confidence_interval), abs=1e-12)
    assert row.ci_high < 0
    assert row.reading == (f"l1_finetune beats EComp 121 at size 0.65 by {-100 * diffs.mean():.1f} points "
                           f"(95 % CI {100 * row.ci_low:+.1f} to {100 * row.ci_high:+.1f})")


def test_a_constant_difference_has_a_zero_width_interval_and_ecomp_can_win(tables):
    _, _, v = tables
    row = v.loc[("121+ft1", "l1_finetune")]
    assert row.difference == pytest.approx(0.03) and row.ci_low == pytest.approx(0.03) == row.ci_high
    assert row.reading == "EComp 121+ft1 beats l1_finetune at size 0.65 by 3.0 points (95 % CI +3.0 to +3.0)"


def test_the_newest_duplicate_is_used_and_deterministic_baselines_work(tables):
    _, _, v = tables
    row = v.loc[("121", "l1_prune")]
    assert row.baseline_accuracy == pytest.approx(pruned(0.65, 0)) and row.n_pairs == 10


def test_sizes_outside_a_baselines_range_are_not_extrapolated(tables):
    _, baselines, v = tables
    assert v.loc[("001", "l1_prune")].n_pairs == 0
    assert v.loc[("001", "l1_prune")].reading.startswith("too few seeds paired inside l1_prune's measured sizes "
                                                         "to say (0 of 10; at least 8 needed)")
    partly = v.loc[("101", "l1_prune")]          # the row speaks of the 8 paired runs only
    assert partly.n_pairs == 8 and partly.n_runs == 10
    assert partly.size_mean == pytest.approx(0.5) and partly.ecomp_accuracy == pytest.approx(0.9)
    assert partly.difference == pytest.approx(0.9 - pruned(0.5, 0))
    assert "EComp 101 beats l1_prune at size 0.50 by 15.0 points" in partly.reading
    assert "8 of 10 runs inside l1_prune's sizes" in partly.reading
    curve = baselines[(baselines.variant == "l1_prune") & (baselines.seed == 1)]
    assert np.isnan(accuracy_at(curve, 0.1)) and np.isnan(accuracy_at(curve, 0.81))
    assert accuracy_at(curve, 0.35) == pytest.approx(pruned(0.35, 1))


def test_frontier_bands_are_t_intervals_over_seeds(tables):
    _, baselines, _ = tables
    f = frontier_table(baselines).set_index(["variant", "keep"])
    values = [finetuned(0.5, k) for k in SEEDS]
    low, high = stats.t.interval(0.95, 9, loc=np.mean(values), scale=stats.sem(values))
    assert f.loc[("l1_finetune", 0.5)].n_seeds == 10
    assert (f.loc[("l1_finetune", 0.5)].ci_low, f.loc[("l1_finetune", 0.5)].ci_high) == pytest.approx((low, high))
    assert f.loc[("l1_prune", 0.5)].ci_low == f.loc[("l1_prune", 0.5)].ci_high == pytest.approx(0.75)


def test_points_never_print_minus_zero():
    from experiments.verdict import points

    assert points(-0.0002) == "-0.02" and points(0.0123) == "+1.2" and points(0.0) == "+0.0"


def test_interval_helpers_on_edge_cases():
    assert np.isnan(mean_ci(np.array([0.5]))[1]) and mean_ci(np.array([]))[0] != mean_ci(np.array([]))[0]
    assert np.isnan(bootstrap_ci(np.array([0.1]))[0])
    low, high = bootstrap_ci(np.array([0.0, 0.0, 0.0, 0.0, 1.0]))   # BCa degenerate: falls back, stays finite
    assert np.isfinite(low) and np.isfinite(high) and low <= 0.2 <= high


def test_report_writes_frontier_and_verdict_and_logs_them(store, tmp_path):
    out = tmp_path / "report"
    files = figures.build_report(compose_cfg(store, out, "grid.scenarios=[121,001,101]", "grid.seeds=[0,1,2,3,4]"))
    names = sorted(p.name for p in files)
    for name in ("frontier.png", "frontier.pdf", "frontier.csv", "verdict.csv", "verdict.md"):
        assert name in names
    verdict = pd.read_csv(out / "verdict.csv", dtype={"ecomp": str})
    assert list(verdict.ecomp.unique()) == ["121", "001", "101", "121+ft1"]
    md = (out / "verdict.md").read_text()
    e, b = np.mean([0.8013 + 0.002 * k for k in SEEDS]), np.mean([finetuned(0.65, k) for k in SEEDS])
    assert f"| 121 | 10 | 0.650 | {e:.4f} | l1_finetune | 10 | {b:.4f} | {100 * (e - b):+.1f} |" in md
    assert (out / "frontier.png").read_bytes().startswith(b"\x89PNG")


def test_lever_table_pairs_each_lever_with_the_papers_runs_by_seed():
    from experiments.levers import lever_table, with_levers

    rows = []
    for k in range(10):
        rows += [{"variant": "121", "scenario": "121", "seed": k, "best_test_accuracy": 0.80 + 0.002 * k,
                  "best_compression": 0.7},
                 {"variant": "121 [similarity=cka]", "scenario": "121", "seed": k,
                  "best_test_accuracy": 0.81 + 0.002 * k + 0.001 * (k % 3), "best_compression": 0.6 - 0.01 * (k % 2)},
                 {"variant": "121+ft1", "scenario": "121", "seed": k, "best_test_accuracy": 0.85,
                  "best_compression": 0.7}]
    runs = pd.DataFrame(rows)
    assert sorted(set(with_levers(runs).lever)) == ["+ft1", "[similarity=cka]", "paper"]
    t = lever_table(runs, ["121"]).set_index("lever")
    cka = t.loc["[similarity=cka]"]
    diffs = np.array([0.01 + 0.001 * (k % 3) for k in range(10)])
    ci = stats.bootstrap((diffs,), np.mean, n_resamples=9_999, method="BCa", rng=np.random.default_rng(0))
    assert cka.n_pairs == 10 and cka.accuracy_difference == pytest.approx(diffs.mean())
    assert (cka.accuracy_ci_low, cka.accuracy_ci_high) == pytest.approx(tuple(ci.confidence_interval), abs=1e-9)
    assert cka.size_difference == pytest.approx(-0.105)
    assert cka.reading.startswith("test accuracy up 1.1 points (95 % CI") and "size down 10.5 points" in cka.reading
    assert t.loc["+ft1"].reading.endswith("size unchanged (in every pair)")


def test_mlp_and_cnn_runs_are_never_paired_and_sizes_can_be_macs(tmp_path):
    from mlflow.entities import Param

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("ecomp", artifact_location=(tmp_path / "artifacts").as_uri())
    t = int(time.time() * 1000)

    def run(kind, tags, size, macs, acc):
        r = client.create_run(exp_id, start_time=t, tags={k: str(v) for k, v in tags.items()})
        client.log_batch(r.info.run_id, params=[Param("parent.kind", kind)] if kind != "mlp" else [],
                         metrics=[Metric(k, float(v), t, 0) for k, v in {
                             "best_test_accuracy": acc, "best_compression": size, "best_macs_ratio": macs,
                             "best_val_accuracy": 0.5, "parent_test_accuracy": 0.9, "accuracy_mean": 0.5,
                             "compression_mean": size, "similarity_mean": 0.1}.items()])
        client.set_terminated(r.info.run_id, "FINISHED")

    for seed in SEEDS:
        for keep in KEEPS:               # the CNN's baseline: accuracy = its MAC ratio; the MLP's: 0.5
            run("cnn", {"method": "l1_prune", "keep": keep, "seed": seed}, keep, keep ** 2, keep ** 2)
            run("mlp", {"method": "l1_prune", "keep": keep, "seed": seed}, keep, keep, 0.5)
        run("cnn", {"method": "ecomp", "scenario": "121", "seed": seed}, 0.7, 0.25, 0.30)
        run("mlp", {"method": "ecomp", "scenario": "121", "seed": seed}, 0.7, 0.7, 0.40)
    out = tmp_path / "cnn"
    figures.build_report(compose_cfg(uri, out, "grid.scenarios=[121]", "report.parent=cnn", "report.size=macs"))
    verdict = pd.read_csv(out / "verdict.csv", dtype={"ecomp": str})
    (row,) = verdict.to_dict("records")
    # at 0.25 of the MACs the CNN baseline's curve gives 0.25: EComp +5 points, none of the MLP's runs
    assert row["size_mean"] == pytest.approx(0.25) and row["difference"] == pytest.approx(0.05)
    assert row["n_pairs"] == 10
    mlp = tmp_path / "mlp"                # both kinds in the store, none asked for: the MLPs, said so
    figures.build_report(compose_cfg(uri, mlp, "grid.scenarios=[121]"))
    (row,) = pd.read_csv(mlp / "verdict.csv", dtype={"ecomp": str}).to_dict("records")
    assert row["difference"] == pytest.approx(-0.1) and "report.parent=cnn" in (mlp / "verdict.md").read_text()
    with pytest.raises(Exception, match=r"report.size='flops': one of units, params, macs"):
        figures.build_report(compose_cfg(uri, tmp_path / "bad", "report.size=flops"))
    assert not (tmp_path / "bad").exists()
