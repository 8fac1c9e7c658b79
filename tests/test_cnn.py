"""EComp on convolutional networks: sizes, the operators, the forward pass and the evaluator
against straightforward references, the baselines, and whole runs through ``run.py`` on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from ecomp.core import conv_initialiser, conv_operators
from ecomp.core.evolution import EComp
from ecomp.core.fitness import Evaluator, ReferenceEvaluator, Weights
from ecomp.core.initialiser import pruned_width
from ecomp.core.mutation import MutationSpec
from ecomp.kernels import conv_forward
from ecomp.measures.cka import LinearCKA
from ecomp.measures.tsne import TSNE
from ecomp.methods.pruning import structured_prune
from ecomp.nets import convnet
from ecomp.nets.conv_population import ConvPopulation
from ecomp.nets.convnet import ConvNet, ConvPlan, Stage
from ecomp.nets.network import load_network, logits, save_network
from ecomp.nets.sizes import counted_macs, plan_size

from conftest import run_cli


def random_net(plan: ConvPlan, seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return convnet.from_module(convnet.build_module(plan), plan)


def distances(a: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances between rows (what the similarity reads; feature order free)."""
    a = a.double()
    return torch.cdist(a, a) ** 2


@st.composite
def plans(draw) -> ConvPlan:
    """Small CNN plans on 1x12x12 images: 1-3 convs (pool max/avg/none), 0-2 hidden linears."""
    stages, size = [], 12
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.sampled_from([1, 3]))
        pad = draw(st.integers(0, k // 2))
        size = size + 2 * pad - k + 1
        pool = draw(st.sampled_from([None, "max", "avg"])) if size >= 4 else None
        stages.append(Stage("conv", draw(st.integers(2, 6)), k, 1, pad, pool, 2 if pool else 1))
        size = size // 2 if pool else size
    stages += [Stage("linear", draw(st.integers(2, 12))) for _ in range(draw(st.integers(0, 2)))]
    plan = ConvPlan((1, 12, 12), tuple(stages + [Stage("linear", 5)]))
    assume(plan.problems() is None)
    return plan


# -- sizes ------------------------------------------------------------------------------------

def test_lenet5_macs_params_and_shapes_match_a_hand_count():
    plan = convnet.lenet5((1, 28, 28), 10)
    # conv1 6x1x5x5 on 28x28, conv2 16x6x5x5 on 10x10, then 400-120-84-10
    hand = 6 * 25 * 28 * 28 + 16 * 6 * 25 * 10 * 10 + 400 * 120 + 120 * 84 + 84 * 10
    assert hand == 416_520
    assert plan_size(plan, "macs") == hand == counted_macs(random_net(plan))
    assert plan_size(plan, "params") == sum(p.numel() for p in convnet.build_module(plan).parameters()) == 61_706
    assert plan_size(plan, "units") == 6 + 16 + 120 + 84
    assert plan.flat_size() == 25


@settings(max_examples=25, deadline=None)
@given(plans())
def test_analytic_macs_and_params_equal_torchs_counter_on_any_plan(plan):
    net = random_net(plan)
    assert plan_size(plan, "macs") == counted_macs(net)
    assert plan_size(plan, "params") == sum(p.numel() for p in convnet.build_module(plan).parameters())


def test_an_mlps_macs_are_its_weights():
    layers = [(torch.randn(32, 64), torch.randn(32)), (torch.randn(10, 32), torch.randn(10))]
    assert counted_macs(layers) == 64 * 32 + 32 * 10


def test_batchnorm_is_folded_exactly():
    plan = convnet.lenet5((1, 28, 28), 10, channels=(4, 8), hidden=(16,))
    torch.manual_seed(0)
    model = convnet.build_module(plan, batchnorm=True)
    for m in model.modules():                       # non-trivial running statistics and affine terms
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    x = torch.rand(16, 784)
    net = convnet.from_module(model.eval(), plan)
    torch.testing.assert_close(logits(net, x), model(x).detach(), rtol=1e-4, atol=1e-5)


def test_a_cnn_network_file_round_trips(tmp_path):
    net = random_net(convnet.lenet5((1, 28, 28), 10))
    save_network(net, tmp_path / "n.pt")
    back = load_network(tmp_path / "n.pt")
    assert isinstance(back, ConvNet) and back.plan == net.plan
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(back.layers, net.layers))


def test_impossible_plans_say_why():
    assert "below 1 pixel" in convnet.lenet5((1, 8, 8), 10).problems()
    assert convnet.lenet5((1, 8, 8), 10, kernel=3, padding=(1, 1)).problems() is None


# -- the initial population and the operators --------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(plans(), st.integers(2, 8).map(lambda n: 2 * n))
def test_initial_population_prunes_filters_by_l1_and_its_inputs_downstream(plan, size):
    parent = random_net(plan)
    pop = conv_initialiser.l1_population(parent, size, 0.9, 0.2)
    x = torch.rand(4, 144)
    for i in (0, size - 1):
        net = pop.network(i)
        assert net.plan.units == tuple(pruned_width(u, 0.9 if i == 0 else 0.2) for u in plan.units)
        logits(net, x)                                   # shapes chain through every stage
        # the kept filters of stage 0 are the ones with the largest L1 norms, in their original order
        norms = parent.layers[0][0].abs().flatten(1).sum(1)
        kept = torch.argsort(norms, descending=True, stable=True)[:net.plan.units[0]].sort().values
        assert torch.equal(net.layers[0][0], parent.layers[0][0][kept])


@settings(max_examples=20, deadline=None)
@given(plans(), st.integers(0, 2 ** 16))
def test_crossover_swaps_the_block_of_units_and_children_take_their_bulk_parents_shapes(plan, seed):
    pop = conv_initialiser.l1_population(random_net(plan), 6, 0.9, 0.3)
    pairs = torch.tensor([[0, 5], [2, 3], [4, 4]])
    g = torch.Generator().manual_seed(seed)
    cuts = conv_operators.draw_cuts(pop, pairs, torch.Generator().manual_seed(seed))
    children = conv_operators.recombine(pop, pairs, g)
    for k, (a, b) in enumerate(pairs.tolist()):
        for j, (bulk, donor) in enumerate(((b, a), (a, b))):
            child = children.members[2 * k + j]
            assert children.widths[2 * k + j] == pop.widths[bulk]
            for l, ((w, bias), (bw, bb), (dw, db)) in enumerate(zip(child, pop.members[bulk], pop.members[donor])):
                c = int(cuts[k, l])
                assert 1 <= c <= min(w.shape[0], dw.shape[0])
                cols = conv_operators.block_columns(pop, l, c)
                per_column = w[0].numel() // w.shape[1]  # a conv's input channel is k x k weights
                ref = bw.clone()                         # straightforward: the bulk parent, the donor's block
                ref.flatten(1)[:c, :cols * per_column] = dw.flatten(1)[:c, :cols * per_column]
                assert torch.equal(w, ref)
                assert torch.equal(bias, torch.cat([db[:c], bb[c:]]))
    logits(children.network(0), torch.rand(2, 144))


def test_the_cut_bound_reduces_to_the_papers_on_dense_layers_and_reaches_every_first_filter():
    plan = convnet.lenet5((1, 28, 28), 10)
    pop = conv_initialiser.l1_population(random_net(plan), 2, 1.0, 1.0)
    cuts = conv_operators.draw_cuts(pop, torch.tensor([[0, 1]] * 400), torch.Generator().manual_seed(0))
    assert int(cuts[:, 0].max()) == 6                   # not capped at the image's one channel
    # after the Flatten the input units are the 16 channels; then min(in, out) as in the paper
    assert [int(cuts[:, l].max()) for l in range(1, 5)] == [6, 16, 84, 10]
    assert conv_operators.block_columns(pop, 0, 4) == 1 and conv_operators.block_columns(pop, 2, 3) == 3 * 25


def test_mutation_multiplies_only_weights_of_chosen_children():
    pop = conv_initialiser.l1_population(random_net(convnet.lenet5((1, 28, 28), 10)), 8, 0.9, 0.3)
    before = pop.take(list(range(8)))
    chosen = conv_operators.mutate_(pop, 0.5, 0.9, 1.1, torch.Generator().manual_seed(3))
    assert chosen
    for i in range(8):
        for (w, b), (w0, b0) in zip(pop.members[i], before.members[i]):
            assert torch.equal(b, b0)
            if i in chosen:
                ratio = w[w0 != 0] / w0[w0 != 0]
                assert float(ratio.min()) >= 0.9 - 1e-6 and float(ratio.max()) <= 1.1 + 1e-6
            else:
                assert torch.equal(w, w0)


# -- the forward pass and the evaluator --------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(plans(), st.sampled_from(["flat", "pooled"]), st.booleans())
def test_grouped_forward_equals_the_per_network_loop(plan, features, converged):
    pop = conv_initialiser.l1_population(random_net(plan), 8, 0.9, 0.3)
    if converged:                                        # several individuals of one architecture
        pop = ConvPopulation(plan, [pop.members[i // 3] for i in range(8)]).take(list(range(8)))
    x = torch.rand(20, 144)
    ref_logits, ref_hidden = conv_forward.forward_loop(pop, x, features)
    fast_logits, fast_hidden = conv_forward.forward_grouped(pop, x, features)
    torch.testing.assert_close(fast_logits, ref_logits, rtol=1e-4, atol=1e-4)
    for layer_ref, layer_fast in zip(ref_hidden, fast_hidden):
        for a, b in zip(layer_ref, layer_fast):
            assert a.shape == b.shape
            torch.testing.assert_close(distances(b), distances(a), rtol=1e-4, atol=1e-3)


def test_the_forward_pass_keeps_its_memory_bound_by_chunks(monkeypatch):
    plan = convnet.lenet5((1, 28, 28), 10)
    pop = conv_initialiser.l1_population(random_net(plan), 6, 0.9, 0.3)
    x = torch.rand(10, 784)
    whole = conv_forward.forward_grouped(pop, x)[0]
    monkeypatch.setattr(conv_forward, "MAX_ELEMENTS", 10_000)      # one individual per chunk
    torch.testing.assert_close(conv_forward.forward_grouped(pop, x)[0], whole)


@pytest.mark.parametrize("measure", [TSNE, LinearCKA])
@pytest.mark.parametrize("features", ["flat", "pooled"])
def test_evaluator_equals_the_reference_on_a_cnn_population(measure, features):
    plan = convnet.lenet5((1, 28, 28), 10, channels=(4, 8), hidden=(16,))
    parent = random_net(plan)
    pop = conv_initialiser.l1_population(parent, 6, 0.9, 0.3)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(40, 784, generator=g), torch.randint(0, 10, (40,), generator=g))]
    fast = Evaluator(parent, batches, measure(), features=features, compression="macs").evaluate(pop, 0)
    ref = ReferenceEvaluator(parent, batches, measure(), features=features, compression="macs").evaluate(pop, 0)
    torch.testing.assert_close(fast.accuracy, ref.accuracy)
    torch.testing.assert_close(fast.similarity, ref.similarity, rtol=2e-3, atol=2e-3)
    assert torch.equal(fast.compression, ref.compression)
    assert float(fast.compression[0]) == pytest.approx(plan_size(pop.plan_of(0), "macs") / plan_size(plan, "macs"))


def test_evolution_runs_on_a_cnn_and_children_inherit_their_parents_shapes():
    plan = convnet.lenet5((1, 28, 28), 10, channels=(4, 8), hidden=(16,))
    parent = random_net(plan)
    pop = conv_initialiser.l1_population(parent, 8, 0.9, 0.3)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(40, 784, generator=g), torch.randint(0, 10, (40,), generator=g)) for _ in range(3)]
    ecomp = EComp(Evaluator(parent, batches, TSNE()), Weights(1, 2, 1), MutationSpec(), g)
    records = list(ecomp.run(pop, 1))
    assert len(records) == 4
    assert set(ecomp.population.widths) <= set(pop.widths)          # crossover never makes a new shape
    best, mean = ecomp.pick_best()
    assert 0 <= best < 8 and torch.isfinite(mean).all()


# -- the baselines ------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.3, 0.5, 0.9])
def test_torch_pruning_l1_equals_ecomps_initial_sub_network(keep):
    plan = convnet.lenet5((1, 28, 28), 10)
    parent = random_net(plan)
    pruned = structured_prune(parent, keep, "l1")
    initial = conv_initialiser.l1_population(parent, 1, keep, keep).network(0)
    assert pruned.plan == initial.plan
    for (a, b), (c, d) in zip(pruned.layers, initial.layers):
        assert torch.equal(a, c) and torch.equal(b, d)


# -- whole runs through run.py, real data, a real MLflow store -----------------------------------

CNN_TINY = ["parent=cnn", "data=digits", "parent.kernel=3", "parent.padding=[1,1]", "parent.channels=[4,8]",
            "parent.hidden=[16]", "parent.epochs=2", "population.size=6", "data.train_size=300",
            "data.val_size=100", "data.batch_size=50", "data.test_size=200", "similarity.perplexity=10",
            "progress=false"]


@pytest.mark.slow
def test_a_cnn_run_through_run_py_logs_macs_latency_and_a_model_that_predicts(tmp_path):
    import mlflow

    db = tmp_path / "mlflow.db"
    proc = run_cli("run.py", *CNN_TINY, f"parent.cache_dir={tmp_path / 'parents'}", f"tracking.uri=sqlite:///{db}",
                   f"hydra.run.dir={tmp_path / 'out'}", "fitness.compression=macs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("ecomp").experiment_id])
    m = run.data.metrics
    assert m["parent_macs"] == plan_size(convnet.lenet5((1, 8, 8), 10, (4, 8), 3, (1, 1), 2, (16,)), "macs")
    assert 0 < m["best_macs_ratio"] <= 1 and 0 < m["best_params_ratio"] <= 1
    assert m["best_latency_ms"] > 0 and m["parent_latency_ms"] > 0
    assert run.data.params["parent.kind"] == "cnn" and run.data.tags["compression"] == "macs"
    (output,) = run.outputs.model_outputs
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    model = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    from sklearn.datasets import load_digits

    digits = load_digits()                    # data=digits: the last 500 images are the test split
    x = (digits.data[-500:-300] / 16.0).astype(np.float32)
    y = digits.target[-500:-300]
    assert float((model.predict(x).argmax(1) == y).mean()) == pytest.approx(m["best_test_accuracy"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["l1_prune", "l1_finetune", "scratch", "distill"])
def test_every_baseline_runs_on_a_cnn(tmp_path, method):
    proc = run_cli("run.py", *CNN_TINY, f"method={method}", "method.keep=0.5", "tracking.enabled=false",
                   f"parent.cache_dir={tmp_path / 'parents'}", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stderr + proc.stdout


@pytest.mark.parametrize("override,names", [
    ("parent.pool=4", "parent=cnn"),                         # 8x8 -> pool 4 -> conv -> pool 4: below 1 pixel
    ("parent.kind=rnn", "parent.kind"),
    ("parent.channels=[]", "parent.channels"),
    ("similarity.features=mean", "similarity.features"),
    ("fitness.compression=flops", "fitness.compression"),
])
def test_bad_cnn_settings_are_one_line_errors_before_any_run(tmp_path, override, names):
    db = tmp_path / "mlflow.db"
    proc = run_cli("run.py", *CNN_TINY, override, f"tracking.uri=sqlite:///{db}",
                   f"parent.cache_dir={tmp_path / 'parents'}", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and names in lines[0], proc.stderr
    assert not db.exists()                                   # refused before the store is opened
    assert not (tmp_path / "parents").exists() or not any((tmp_path / "parents").iterdir())
