"""EComp on convolutional networks: sizes, the operators, the forward pass and the evaluator
against straightforward references, the baselines, and whole runs through ``run.py`` on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from ecomp.core.initialiser import l1_population
from ecomp.core.recombination import draw_cuts
from ecomp.kernels import c_library, conv_forward, native
from ecomp.methods.pruning import structured_prune
from ecomp.nets import convnet
from ecomp.nets.net_population import NetPopulation
from ecomp.nets.convnet import ConvNet, ConvPlan, Stage, plan_size
from ecomp.nets.sizes import counted_macs
from ecomp.nets.structure import logits

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


def test_impossible_plans_say_why():
    assert "below 1 pixel" in convnet.lenet5((1, 8, 8), 10).problems()
    assert convnet.lenet5((1, 8, 8), 10, kernel=3, padding=(1, 1)).problems() is None


# -- the operators (what every kind must do is in test_kinds.py; here what a CNN adds) -----------

def test_the_cut_bound_reduces_to_the_papers_on_dense_layers_and_reaches_every_first_filter():
    plan = convnet.lenet5((1, 28, 28), 10)
    pop = l1_population(random_net(plan), 2, 1.0, 1.0)
    cuts = draw_cuts(pop, torch.tensor([[0, 1]] * 400), torch.Generator().manual_seed(0))
    assert int(cuts[:, 0].max()) == 6                   # not capped at the image's one channel
    # after the Flatten the input units are the 16 channels; then min(in, out) as in the paper
    assert [int(cuts[:, l].max()) for l in range(1, 5)] == [6, 16, 84, 10]
    net = pop.network(0)
    assert net.block_columns(0, 4) == 1 and net.block_columns(2, 3) == 3 * 25


# -- the forward pass --------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 13), st.integers(1, 13), st.booleans(), st.booleans())
def test_max_pool_gives_max_pool2ds_values(k, c, h, w, channels_last, nan):
    """``convnet.max_pool`` (strided maxima; the run's passes) against ``F.max_pool2d``: the same
    values, NaNs where it has them, sizes not divisible by ``k`` cropped as it crops them."""
    assume(h >= k and w >= k)
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(c * h + w))
    if nan:
        x[1, c - 1, h - 1, 0] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = torch.nn.functional.max_pool2d(x, k)
    got = convnet.max_pool(x, k)
    assert got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
    out = torch.empty_like(want)
    assert convnet.max_pool(x, k, out) is out
    assert torch.equal(out.nan_to_num(), want.nan_to_num())


@settings(max_examples=20, deadline=None)
@given(plans(), st.sampled_from(["flat", "pooled"]), st.booleans())
def test_grouped_forward_equals_the_per_network_loop(plan, features, converged):
    pop = l1_population(random_net(plan), 8, 0.9, 0.3)
    if converged:                                        # several individuals of one architecture
        pop = NetPopulation(plan, [pop.members[i // 3] for i in range(8)]).take(list(range(8)))
    x = torch.rand(20, 144)
    ref_logits, ref_hidden = conv_forward.forward_loop(pop, x, features)
    fast_logits, fast_hidden = conv_forward.forward_grouped(pop, x, features)
    torch.testing.assert_close(fast_logits, ref_logits, rtol=1e-4, atol=1e-4)
    for layer_ref, layer_fast in zip(ref_hidden, fast_hidden):
        for a, b in zip(layer_ref, layer_fast):
            assert a.shape == b.shape
            torch.testing.assert_close(distances(b), distances(a), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not c_library.available(), reason="the C library does not build here")
@settings(max_examples=15, deadline=None)
@given(plans(), st.booleans(), st.integers(1, 3))
def test_the_c_copies_give_the_grouped_pass_its_own_bits(plan, converged, images):
    """The per-individual copies of the maps by the C library (the run's CPU path) and by torch,
    the convolutions by torch in both: every logit and every representation equal, bit for bit
    (mixed widths, runs of one architecture, odd channel counts, the chunked first stage)."""
    pop = l1_population(random_net(plan), 8, 0.9, 0.3)
    if converged:
        pop = NetPopulation(plan, [pop.members[i // 3] for i in range(8)]).take(list(range(8)))
    x = torch.rand(7 * images, 144)
    torch_logits, torch_hidden = conv_forward.forward_grouped(pop, x, "flat", native=False)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(native, "conv_block", lambda: 0)                     # no fused convolution
        c_logits, c_hidden = conv_forward.forward_grouped(pop, x, "flat", native=True)
    assert torch.equal(c_logits, torch_logits)
    for layer_t, layer_c in zip(torch_hidden, c_hidden, strict=True):
        for a, b in zip(layer_t, layer_c, strict=True):
            assert torch.equal(a, b)


@pytest.mark.skipif(not c_library.available() or native.conv_block() == 0,
                    reason="no vector copy of the fused convolution here")
@settings(max_examples=20, deadline=None)
@given(plans(), st.sampled_from(["flat", "pooled"]), st.booleans(), st.integers(1, 3))
def test_the_fused_convolutions_agree_with_the_per_network_loop(plan, features, converged, images):
    """The run's CPU pass (the C library's fused convolution + pooling stages and copies) against
    the oracle, on plans with max, average and no pooling at any stage."""
    pop = l1_population(random_net(plan), 8, 0.9, 0.3)
    if converged:
        pop = NetPopulation(plan, [pop.members[i // 3] for i in range(8)]).take(list(range(8)))
    x = torch.rand(7 * images, 144)
    ref_logits, ref_hidden = conv_forward.forward_loop(pop, x, features)
    fast_logits, fast_hidden = conv_forward.forward_grouped(pop, x, features, native=True)
    torch.testing.assert_close(fast_logits, ref_logits, rtol=1e-4, atol=1e-4)
    for layer_ref, layer_fast in zip(ref_hidden, fast_hidden, strict=True):
        for a, b in zip(layer_ref, layer_fast, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(distances(b), distances(a), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("native_pass", [False, True])
def test_a_weight_changed_in_place_reaches_the_next_pass(native_pass):
    """The grouped pass keeps each population's joined filters between calls (the final pick
    evaluates one population on every batch); a weight changed in place, as mutation changes
    them, is in the next pass."""
    plan = convnet.lenet5((1, 12, 12), 5)
    pop = l1_population(random_net(plan), 6, 0.9, 0.5)
    pop = NetPopulation(plan, [pop.members[i // 3] for i in range(6)]).take(list(range(6)))
    x = torch.rand(9, 144)
    before, _ = conv_forward.forward_grouped(pop, x, native=native_pass)
    for l in range(len(plan.stages)):
        pop.members[4][l][0].mul_(1.5)
        pop.members[1][l][1].add_(0.25)
    after, hidden = conv_forward.forward_grouped(pop, x, native=native_pass)
    ref, ref_hidden = conv_forward.forward_loop(pop, x)
    assert not torch.allclose(after[4], before[4]) and not torch.allclose(after[1], before[1])
    torch.testing.assert_close(after, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(distances(hidden[0][4]), distances(ref_hidden[0][4]), rtol=1e-4, atol=1e-3)


def chunked_pass(monkeypatch, pop: NetPopulation, x: torch.Tensor, budget: int, block: int | None = None):
    """``forward_grouped(pop, x)`` under a budget of ``budget`` floats (``block`` for a block of
    the first convolution; default the same), watched: the individuals
    of each first-stage chunk, of each later-stage chunk, the floats of every convolution's
    output (the widest activations: the ReLU and pooling run on each) and the images of each
    block of the first convolution."""
    first, later, relu_pool = conv_forward._first_stage, conv_forward._later, conv_forward._relu_pool
    first_pool = conv_forward._bias_relu_pool
    seen: dict[str, list[int]] = {"first": [], "later": [], "conv": [], "images": [], "block": []}

    def first_spy(*args):
        for part, h in first(*args):
            seen["first"].append(len(part))
            yield part, h

    def later_spy(pop_, members, h, features, native=False):
        seen["later"].append(len(members))
        return later(pop_, members, h, features, native)

    def relu_pool_spy(plan, l, h, out=None):
        if l > 0 and plan.stages[l].kind == "conv":                     # stage 0: first_pool_spy
            seen["conv"].append(h.numel())
        return relu_pool(plan, l, h, out)

    def first_pool_spy(plan, block, n, window, b, out):
        seen["conv"].append(block.numel())
        seen["images"].append(n)
        seen["block"].append(block.numel())
        return first_pool(plan, block, n, window, b, out)

    with monkeypatch.context() as m:
        m.setattr(conv_forward, "_first_stage", first_spy)
        m.setattr(conv_forward, "_later", later_spy)
        m.setattr(conv_forward, "_relu_pool", relu_pool_spy)
        m.setattr(conv_forward, "_bias_relu_pool", first_pool_spy)
        m.setattr(conv_forward, "MAX_ELEMENTS", budget)
        m.setattr(conv_forward, "BLOCK_ELEMENTS", block or budget)      # per torch thread: one here
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return conv_forward.forward_grouped(pop, x), seen
        finally:
            torch.set_num_threads(threads)


def test_the_forward_pass_keeps_its_memory_bound_by_chunks(monkeypatch):
    """No convolution's output holds more than ``MAX_ELEMENTS`` floats: the individuals run in
    several chunks at the first stage and, within one architecture, at the later stages, and the
    first convolution a few images at a time; below one individual's maps, one individual and one
    image at a time. The results are the unbounded pass's."""
    # no pooling, so the second convolution's maps are the widest: the later stages' chunks count
    plan = convnet.lenet5((1, 28, 28), 10, channels=(4, 8), kernel=3, padding=(1, 1), pool=1, hidden=(16,))
    # two architectures of four individuals each, interleaved, every individual its own weights
    pop = NetPopulation(plan, [l1_population(random_net(plan, seed), 1, keep, keep).members[0]
                                for seed, keep in enumerate([0.7, 0.4] * 4)])
    assert [len(run) for run in pop.groups().values()] == [4, 4]
    x = torch.rand(10, 784)
    whole_logits, whole_hidden = conv_forward.forward_grouped(pop, x)

    def same_as_whole(result):
        logits, hidden = result
        torch.testing.assert_close(logits, whole_logits)
        for layer_whole, layer_chunked in zip(whole_hidden, hidden, strict=True):
            for a, b in zip(layer_whole, layer_chunked, strict=True):
                torch.testing.assert_close(b, a)

    widest = max(u * h * w for units in pop.widths for (u, h, w) in plan.with_units(units).maps()[:-1])
    budget = 2 * widest * x.shape[0]                                # two individuals' widest maps
    result, seen = chunked_pass(monkeypatch, pop, x, budget)
    same_as_whole(result)
    assert seen["conv"] and max(seen["conv"]) <= budget, (seen["conv"], budget)
    assert sum(seen["first"]) == sum(seen["later"]) == pop.size
    assert len(seen["first"]) > 1 and len(seen["later"]) > len(pop.groups()), seen
    assert seen["images"] == [x.shape[0]] * len(seen["first"]), seen         # each chunk's images at once

    result, seen = chunked_pass(monkeypatch, pop, x, budget, block=budget // 3)   # and a few at a time
    same_as_whole(result)
    assert max(seen["block"]) <= budget // 3 and sum(seen["images"]) == len(seen["first"]) * x.shape[0], seen
    assert len(seen["images"]) > len(seen["first"]), seen

    result, seen = chunked_pass(monkeypatch, pop, x, 1_000)      # less than one individual's maps
    same_as_whole(result)
    assert seen["first"] == [1] * pop.size and seen["later"] == [1] * pop.size, seen
    assert seen["images"] == [1] * (pop.size * x.shape[0]), seen


# -- the baselines ------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.3, 0.5, 0.9])
def test_torch_pruning_l1_equals_ecomps_initial_sub_network(keep):
    plan = convnet.lenet5((1, 28, 28), 10)
    parent = random_net(plan)
    pruned = structured_prune(parent, keep, "l1")
    initial = l1_population(parent, 1, keep, keep).network(0)
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
    predicted = model.predict(x.reshape(-1, 1, 8, 8)).argmax(1)      # the signature's images, 1 x 8 x 8
    assert float((predicted == y).mean()) == pytest.approx(m["best_test_accuracy"], abs=1e-9)


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
