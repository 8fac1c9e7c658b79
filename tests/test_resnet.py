"""The residual kind beyond what every kind does (``tests/test_kinds.py``): its plan against torch's
own modules and counter, its grouped forward pass against the per-network loop, crossover
children that stay consistent across the additions, and ``parent=resnet``'s settings."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ecomp.core.initialiser import l1_population
from ecomp.core.recombination import recombine
from ecomp.core.selection import select_pairs
from ecomp.kernels import res_forward
from ecomp.nets.resnet import ResNet, cifar_resnet
from ecomp.nets.sizes import counted_macs
from ecomp.nets.structure import logits

from conftest import run_cli
from kinds import resnet8
from test_cnn import distances


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("depth,widths,image", [(8, (16, 32, 64), (1, 28, 28)), (14, (4, 8, 8), (3, 12, 10))])
def test_a_cifar_resnet_is_he_et_al_and_its_sizes_are_torchs_counts(depth, widths, image):
    plan = cifar_resnet(image, 10, depth, widths)
    n = (depth - 2) // 6
    model = plan.build(batchnorm=True).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 2 * 3 * n + 2                 # stem, two per block, two projections
    assert plan.blocks == (n,) * 3 and plan.strides == (1, 2, 2) and plan.projections == (False, True, True)
    net = plan.network(model)
    assert net.size("macs") == counted_macs(net)
    assert net.size("params") == sum(p.numel() for p in net.to_module().parameters())
    x = torch.rand(4, plan.features, generator=gen(0))
    with torch.no_grad():
        torch.testing.assert_close(logits(net, x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("features", ["flat", "pooled"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_grouped_pass_is_the_per_network_loop(features, channels_last):
    parent = resnet8(3)
    pop = l1_population(parent, 7, 1.0, 0.4)
    pop = pop.take([0, 3, 3, 5, 0, 6, 3])                  # architectures repeated, as evolution makes them
    x = torch.rand(11, parent.in_features, generator=gen(1))
    want_logits, want_hidden = res_forward.forward_loop(pop, x, features)
    got_logits, got_hidden = res_forward.forward_grouped(pop, x, features, channels_last)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    assert len(got_hidden) == parent.feature_layers == 3
    for got, want in zip(got_hidden, want_hidden):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("features", ["flat", "pooled"])
@pytest.mark.parametrize("plan_args", [None, ((3, 12, 10), 10, 14, (4, 8, 8), 7, 2, 3, 3)],
                         ids=["resnet8", "rgb-stride2-pool"])
def test_the_cpu_pass_is_the_per_network_loop(features, plan_args):
    """``forward_each`` (the stem on shared patches, the projections as products on the strided
    pixels) against the oracle, on mixed widths: ResNet-8, and a deeper one on 3-channel 12x10
    images whose 7x7 stride-2 stem is max-pooled (torchvision's)."""
    if plan_args is None:
        parent = resnet8(5)
    else:
        image, classes, depth, widths, k, stride, pad, pool = plan_args
        plan = replace(cifar_resnet(image, classes, depth, widths), stem_kernel=k, stem_stride=stride,
                       stem_padding=pad, stem_pool=pool)
        torch.manual_seed(6)
        parent = plan.network(plan.build(batchnorm=False))
    pop = l1_population(parent, 6, 1.0, 0.4).take([0, 3, 3, 5, 1, 2])
    x = torch.rand(9, parent.in_features, generator=gen(3))
    want_logits, want_hidden = res_forward.forward_loop(pop, x, features)
    got_logits, got_hidden, _ = res_forward.forward(pop, x, features)         # the CPU's default
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    for got, want in zip(got_hidden, want_hidden, strict=True):
        for g, w in zip(got, want, strict=True):
            # channels-last blocks give (H, W, C) order: the same values, the same distances
            assert g.shape == w.shape
            torch.testing.assert_close(g.sort(1).values, w.sort(1).values, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(distances(g), distances(w), rtol=1e-5, atol=1e-4)


def test_a_chunked_grouped_pass_is_the_same(monkeypatch):
    parent = resnet8(4)
    pop = l1_population(parent, 5, 0.8, 0.8)
    x = torch.rand(6, parent.in_features, generator=gen(2))
    whole = res_forward.forward_grouped(pop, x)[0]
    monkeypatch.setattr(res_forward, "MAX_ELEMENTS", 1)    # one individual per chunk
    torch.testing.assert_close(res_forward.forward_grouped(pop, x)[0], whole, rtol=1e-6, atol=1e-6)


def test_crossover_children_keep_each_group_consistent_and_run_as_modules():
    """Every child is a valid ResNet of its bulk parent's widths whose module computes what its
    layers do, and each group has one cut for all its layers: a weight is the donor's exactly
    when the channels it joins are among the first ``cut`` of the group it writes and of the
    group it reads (the image's channels and the classes count as the donor's)."""
    parent = resnet8(5)
    pop = l1_population(parent, 6, 1.0, 0.5)
    for i in range(pop.size):                              # every parent's weights told apart
        for w, b in pop.individual(i):
            w.add_(1000.0 * (i + 1))
            b.add_(1000.0 * (i + 1))
    pairs = select_pairs(torch.randn(6, generator=gen(7)), gen(8))
    children = recombine(pop, pairs, gen(9))
    x = torch.rand(5, parent.in_features, generator=gen(10))
    for k, (a, b) in enumerate(pairs.tolist()):
        for child, bulk, donor in ((children.network(2 * k), b, a), (children.network(2 * k + 1), a, b)):
            assert child.units == pop.widths[bulk]
            with torch.no_grad():
                torch.testing.assert_close(child.to_module()(x), logits(child, x), rtol=1e-4, atol=1e-3)
            pd, pb = pop.network(donor), pop.network(bulk)
            if donor == bulk:
                continue
            groups = child.layer_groups()
            # each group's cut, read off its first writer's biases
            cut = {}
            for l, (writes, _) in enumerate(groups):
                if writes is not None and writes not in cut:
                    bias = child.layers[l][1]
                    mine = [bool(u < len(pd.layers[l][1]) and bias[u] == pd.layers[l][1][u]) for u in range(len(bias))]
                    cut[writes] = mine.index(False) if False in mine else len(mine)
            for l, ((w, _), (writes, reads)) in enumerate(zip(child.layers, groups)):
                rows = w.shape[0] if writes is None else cut[writes]
                cols = w.shape[1] if reads is None else cut[reads]
                assert torch.equal(w[:rows, :cols], pd.layers[l][0][:rows, :cols]), (l, rows, cols)
                assert torch.equal(w[rows:], pb.layers[l][0][rows:]) and torch.equal(w[:, cols:], pb.layers[l][0][:, cols:])


@pytest.mark.parametrize("settings,key", [({"depth": 9, "widths": [16]}, "parent.depth"),
                                          ({"depth": 8, "widths": []}, "parent.widths"),
                                          ({"depth": 8, "widths": [16, 0]}, "parent.widths")])
def test_parent_settings_out_of_range_are_named(settings, key):
    assert ResNet.settings_problem(settings)[0] == key


def test_a_plan_that_cannot_run_says_why():
    plan = cifar_resnet((1, 28, 28), 10, 8, (4, 4, 4))
    assert plan.problems() is None
    assert "group widths" in replace(plan, widths=plan.widths[:-1]).problems()
    assert "shrink" in replace(plan, stem_kernel=29, stem_padding=0).problems()


# -- whole runs through run.py, real data, a real MLflow store -----------------------------------

RESNET_TINY = ["parent=resnet", "data=digits", "parent.widths=[4,6,8]", "parent.epochs=2", "population.size=6",
               "data.train_size=300", "data.val_size=100", "data.batch_size=50", "data.test_size=200",
               "similarity.perplexity=10", "progress=false"]


@pytest.mark.slow
def test_a_resnet_run_through_run_py_logs_macs_and_a_model_that_predicts(tmp_path):
    import mlflow
    import numpy as np
    from sklearn.datasets import load_digits


    db = tmp_path / "mlflow.db"
    proc = run_cli("run.py", *RESNET_TINY, f"parent.cache_dir={tmp_path / 'parents'}", f"tracking.uri=sqlite:///{db}",
                   f"hydra.run.dir={tmp_path / 'out'}", "fitness.compression=macs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("ecomp").experiment_id])
    m = run.data.metrics
    assert m["parent_macs"] == cifar_resnet((1, 8, 8), 10, 8, (4, 6, 8)).size("macs")
    assert 0 < m["best_macs_ratio"] <= 1 and m["best_latency_ms"] > 0
    assert run.data.params["parent.kind"] == "resnet"
    (output,) = run.outputs.model_outputs
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    model = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    digits = load_digits()                    # data=digits: the last 500 images are the test split
    x = (digits.data[-500:-300] / 16.0).astype(np.float32)
    predicted = model.predict(x.reshape(-1, 1, 8, 8)).argmax(1)
    assert float((predicted == digits.target[-500:-300]).mean()) == pytest.approx(m["best_test_accuracy"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["l1_prune", "l1_finetune", "scratch", "distill"])
def test_every_baseline_runs_on_a_resnet(tmp_path, method):

    proc = run_cli("run.py", *RESNET_TINY, f"method={method}", "method.keep=0.5", "tracking.enabled=false",
                   f"parent.cache_dir={tmp_path / 'parents'}", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_an_optuna_search_with_the_levers_runs_on_a_resnet(tmp_path):
    """``hydra/sweeper=optuna`` over a ResNet parent with the selection, similarity and precision
    levers set: every trial finishes, carries the levers and the trial's weights, and is sized in MACs."""
    import mlflow

    db = tmp_path / "mlflow.db"
    tiny = [a for a in RESNET_TINY if not a.startswith("similarity.perplexity")]    # CKA has no perplexity
    proc = run_cli("run.py", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", *tiny,
                   "operators.selection.temperature=0.1", "operators.selection.elite=2", "similarity=cka",
                   "evolution.precision=bfloat16",
                   "fitness.compression=macs", f"parent.cache_dir={tmp_path / 'parents'}",
                   f"tracking.uri=sqlite:///{db}", f"hydra.sweep.dir={tmp_path / 'multirun'}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("ecomp").experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2 and len(runs) == 3                      # two trials under the study's run
    for r in trials:
        p = r.data.params
        assert r.info.status == "FINISHED" and p["parent.kind"] == "resnet"
        assert (p["operators.selection.temperature"], p["operators.selection.elite"], p["similarity._target_"]) \
            == ("0.1", "2", "ecomp.measures.cka.LinearCKA")
        assert p["evolution.precision"] == "bfloat16" and "precisionbfloat16" in r.data.tags["mlflow.runName"]
        assert 0 < r.data.metrics["best_macs_ratio"] <= 1 and "fitness.w_sim" in p


@pytest.mark.parametrize("override,names", [("parent.depth=9", "parent.depth"), ("parent.widths=[]", "parent.widths"),
                                            ("similarity.layers=[3]", "similarity.layers")])
def test_bad_resnet_settings_are_one_line_errors_before_any_run(tmp_path, override, names):

    db = tmp_path / "mlflow.db"
    proc = run_cli("run.py", *RESNET_TINY, override, f"tracking.uri=sqlite:///{db}",
                   f"parent.cache_dir={tmp_path / 'parents'}", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and names in lines[0], proc.stderr
    assert not db.exists()


def test_accuracy_runs_a_heavy_network_a_few_images_at_a_time(monkeypatch):
    from ecomp.nets import structure

    net = resnet8(6)
    x = torch.rand(10, net.in_features, generator=gen(11))
    y = torch.randint(0, net.classes, (10,), generator=gen(12))
    whole = structure.accuracy(net, x, y, chunk=10)
    seen = []
    real = structure.logits
    monkeypatch.setattr(structure, "logits", lambda n, xs: seen.append(xs.shape[0]) or real(n, xs))
    monkeypatch.setattr(structure, "CHUNK_MACS", 3 * net.size("macs"))
    assert structure.accuracy(net, x, y) == whole and seen == [3, 3, 3, 1]
