"""The compression methods on a small real problem: real FashionMNIST, real Hydra config, real MLflow store."""

from __future__ import annotations


import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import random_layers, random_mlp
from ecomp.nets import data as data_mod
from ecomp.core.initialiser import pruned_width
from ecomp.nets.structure import l1_ranking, prune
from ecomp.methods.pruning import IMPORTANCES, structured_prune
from ecomp.nets.network import load_network
from ecomp.nets.structure import accuracy
from ecomp.app.spec import data_spec
from ecomp.app.pipeline import run_experiment
from ecomp.methods.metrics import MACHINE_READINGS
from ecomp.nets.training import distillation_loss, fine_tune

SHARED = ["best_test_accuracy", "best_val_accuracy", "best_compression", "best_hidden_units", "best_parameters",
          "best_params_ratio", "parent_test_accuracy", "parent_val_accuracy", "run_seconds"]


def today_l1(parent, keep):
    """EComp's initial-population rule: the sub-network its L1 pruning keeps at ``keep``."""
    return prune(parent, [r[:pruned_width(len(r), keep)].sort().values for r in l1_ranking(parent)])


@pytest.mark.parametrize("widths", [[784, 256, 256, 10], [20, 13, 13, 13, 5]])
@pytest.mark.parametrize("keep", [0.2, 0.3, 0.5, 0.625, 0.9, 1.0])
def test_torch_pruning_l1_gives_exactly_todays_l1_subnetwork(widths, keep):
    parent = random_mlp(widths, torch.Generator().manual_seed(len(widths)))
    ours, theirs = today_l1(parent, keep), structured_prune(parent, keep, "l1")
    assert [w.shape for w, _ in theirs.layers] == [w.shape for w, _ in ours.layers]
    for (w1, b1), (w2, b2) in zip(ours.layers, theirs.layers):
        assert torch.equal(w1, w2) and torch.equal(b1, b2)


@pytest.mark.parametrize("importance", sorted(IMPORTANCES))
def test_every_importance_keeps_the_asked_widths_and_a_working_network(importance):
    g = torch.Generator().manual_seed(1)
    parent = random_mlp([30, 16, 16, 4], g)
    x, y = torch.randn(64, 30, generator=g), torch.randint(0, 4, (64,), generator=g)
    net = structured_prune(parent, 0.5, importance, (x, y))
    assert [w.shape for w, _ in net.layers] == [(8, 30), (8, 8), (4, 8)]
    # each kept hidden neuron is one of the parent's, with its incoming row unchanged
    rows = {tuple(r.tolist()) for r in parent.layers[0][0]}
    assert all(tuple(r.tolist()) in rows for r in net.layers[0][0])
    if importance != "l1":
        l1 = structured_prune(parent, 0.5, "l1")
        assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(net.layers, l1.layers))


def test_taylor_without_data_is_refused():
    with pytest.raises(ValueError, match="needs data"):
        structured_prune(random_mlp([6, 4, 3], torch.Generator().manual_seed(0)), 0.5, "taylor")


def test_distillation_loss_is_zero_against_itself_and_mixes_in_labels():
    g = torch.Generator().manual_seed(0)
    teacher = random_mlp([5, 7, 3], g).to_module()
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    logits = teacher(x).detach()
    assert distillation_loss(teacher, 4.0)(logits, x, y).item() == pytest.approx(0.0, abs=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, y).item()
    assert distillation_loss(teacher, 4.0, alpha=0.0)(logits, x, y).item() == pytest.approx(ce, rel=1e-6)


def test_fine_tune_leaves_its_input_alone_and_zero_epochs_copy():
    g = torch.Generator().manual_seed(0)
    net = random_mlp([10, 6, 3], g)
    before = [(w.clone(), b.clone()) for w, b in net.layers]
    x, y = torch.randn(40, 10, generator=g), torch.randint(0, 3, (40,), generator=g)
    tuned = fine_tune(net, x, y, 2, 1e-2, 8, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, c) for (a, _), (c, _) in zip(net.layers, before))
    assert not torch.equal(tuned.layers[0][0], net.layers[0][0])
    copy = fine_tune(net, x, y, 0, 1e-2, 8, torch.Generator())
    assert all(torch.equal(a, c) for (a, _), (c, _) in zip(copy.layers, net.layers))


def test_validation_split_is_disjoint_and_keeps_the_papers_subset():
    n = 1000
    split = data_mod.Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))
    rd = data_mod.draw_run_data(split, 300, 200, torch.Generator().manual_seed(4))
    paper = torch.randperm(n, generator=torch.Generator().manual_seed(4))[:300]
    assert torch.equal(rd.train.y, paper)                        # the subset EComp always used
    assert not set(rd.val.y.tolist()) & set(rd.train.y.tolist()) and len(rd.val.y) == 200
    rest = rd.without_val()
    assert len(rest.y) == 800 and not set(rest.y.tolist()) & set(rd.val.y.tolist())
    assert rest.y.tolist() == sorted(rest.y.tolist())           # original order


def runs_by_name(store):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("ecomp")
    return client, {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=100)}


@pytest.mark.slow
@pytest.mark.parametrize("method,extra,name", [
    ("l1_prune", [], "l1_prune-keep0.5-seed2"),
    ("l1_prune", ["method.importance=taylor"], "l1_prune-keep0.5-importancetaylor-seed2"),
    ("l1_finetune", [], "l1_finetune-keep0.5-seed2"),
    ("scratch", [], "scratch-keep0.5-seed2"),
    ("distill", ["method.temperature=2"], "distill-keep0.5-temperature2-seed2"),
])
def test_each_baseline_is_a_tracked_run_with_the_shared_tail(make_cfg, store, tmp_path, method, extra, name):
    cfg = make_cfg(f"method={method}", "method.keep=0.5", "seed=2", "data.val_size=2000", *extra)
    result = run_experiment(cfg)
    client, runs = runs_by_name(store)
    run = runs[name]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["method"] == method and tags["keep"] == "0.5" and tags["seed"] == "2" and "scenario" not in tags
    assert tags["variant"] == {"l1_prune-keep0.5-importancetaylor-seed2": "l1_prune (importance=taylor)",
                               "distill-keep0.5-temperature2-seed2": "distill (temperature=2)"}.get(name, method)
    for key in SHARED:
        assert key in run.data.metrics, key
    m = run.data.metrics
    assert m["best_compression"] == 0.5 and m["best_hidden_units"] == 32          # 16 + 16 of 32 + 32
    assert 0.3 < m["best_test_accuracy"] <= 1 and 0.3 < m["best_val_accuracy"] <= 1
    assert not any(k.startswith(("fitness", "population.", "similarity.")) for k in run.data.params)
    folder = client.download_artifacts(run.info.run_id, "", str(tmp_path))
    layers = load_network(f"{folder}/best_network.pt")
    test = data_mod.load(data_spec(cfg).root, train=False)
    assert accuracy(layers, test.x[:1000], test.y[:1000]) == m["best_test_accuracy"]
    assert result.history == []


@pytest.mark.slow
def test_training_baselines_beat_plain_pruning_and_are_seeded(make_cfg):
    def acc(*ov):
        return run_experiment(make_cfg("tracking.enabled=false", "method.keep=0.3", *ov)).metrics

    pruned, tuned = acc("method=l1_prune"), acc("method=l1_finetune", "method.epochs=3")
    assert tuned["best_test_accuracy"] > pruned["best_test_accuracy"]
    assert tuned["pruned_test_accuracy"] == pruned["best_test_accuracy"]
    a, b = acc("method=l1_finetune", "seed=1"), acc("method=l1_finetune", "seed=1")
    assert {k: v for k, v in a.items() if k not in MACHINE_READINGS} == \
        {k: v for k, v in b.items() if k not in MACHINE_READINGS}


@pytest.mark.slow
def test_ecomp_then_fine_tune_keeps_the_evolution_and_tunes_its_network(make_cfg, store):
    plain = run_experiment(make_cfg("fitness=120", "seed=1", "tracking.enabled=false"))
    tuned = run_experiment(make_cfg("fitness=120", "seed=1", "method.finetune_epochs=2"), scenario="120")
    assert tuned.history == plain.history
    assert tuned.metrics["evolved_test_accuracy"] == plain.metrics["best_test_accuracy"]
    assert tuned.metrics["best_compression"] == plain.metrics["best_compression"]
    assert tuned.metrics["best_test_accuracy"] != plain.metrics["best_test_accuracy"]
    run = runs_by_name(store)[1]["120-ft2-seed1"]
    assert run.data.tags["finetune_epochs"] == "2" and run.data.tags["scenario"] == "120"
