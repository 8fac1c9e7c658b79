"""What every layer kind must do, tested on each kind in ``tests/kinds.py`` against references that
do not use the kind's own rules: the initial population against the parent with the removed units
masked, crossover against the single-cut rule written out per network, mutation, the evaluator
against the per-network reference, sizes against torch's counter, files and an evolution."""

from __future__ import annotations

import pytest
import torch

from ecomp.core.evolution import EComp
from ecomp.core.fitness import Evaluator, ReferenceEvaluator, Weights
from ecomp.core.initialiser import keep_ratios, l1_population, pruned_width
from ecomp.core.mutation import MutationSpec, mutate_
from ecomp.core.recombination import recombine
from ecomp.core.selection import select_pairs
from ecomp.kernels import c_library
from ecomp.measures.cka import LinearCKA
from ecomp.measures.tsne import TSNE
from ecomp.nets.checkpoint import read_checkpoint
from ecomp.nets.network import load_network, save_network
from ecomp.nets.sizes import counted_macs
from ecomp.nets.structure import accuracy, logits

from kinds import FEATURES, KINDS, reference_scores, relu_groups

KIND = pytest.mark.parametrize("kind", sorted(KINDS))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def masked_logits(parent, keep: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The parent's module with every unit not in ``keep`` silenced after each ReLU that outputs
    its group: what the pruned network must compute, found without the kind's pruning rules."""
    model = parent.to_module()
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    groups = relu_groups(parent)
    assert len(relus) == len(groups) and set(groups) == set(range(len(keep)))
    for relu, kept in zip(relus, [keep[g] for g in groups]):
        def hook(_m, _i, out, kept=kept):
            mask = torch.zeros(out.shape[1])
            mask[kept] = 1
            return out * mask.view(1, -1, *([1] * (out.dim() - 2)))
        relu.register_forward_hook(hook)
    with torch.no_grad():
        return model(x)


@KIND
def test_the_initial_population_is_the_parent_with_its_smallest_l1_units_removed(kind):
    parent = KINDS[kind]()
    pop = l1_population(parent, 6, 0.9, 0.3)
    x = torch.rand(20, FEATURES, generator=gen(1))
    assert pop.size == 6 and pop.in_features == FEATURES and pop.classes == parent.classes
    for i, ratio in enumerate(keep_ratios(6, 0.9, 0.3)):
        keep = [torch.topk(s, pruned_width(len(s), ratio)).indices.sort().values for s in reference_scores(parent)]
        net = pop.network(i)
        assert net.kind == parent.kind and net.units == tuple(len(k) for k in keep) == pop.widths[i]
        torch.testing.assert_close(logits(net, x), masked_logits(parent, keep, x), rtol=1e-5, atol=1e-5)


@KIND
def test_a_crossover_block_spans_the_inputs_its_units_feed(kind):
    net = KINDS[kind]()
    n_cuts = len(net.cut_limits(net))
    for cut in range(1, min(net.units) + 1):
        for layer, ((_, cols), (_, reads)) in enumerate(zip(net.crossover_blocks([cut] * n_cuts), net.layer_groups())):
            if reads is not None:
                assert cols == len(net.input_columns(layer, torch.arange(cut)))


def reference_cuts(pop, pairs, generator) -> list[list[int]]:
    """The cuts drawn as the paper says: uniform on ``[1, limit]`` per layer of a chain (the limit
    the smallest of both parents' inputs and outputs there, the image's features first) or per
    channel group of a residual network (both parents' widths)."""
    limits = []
    for a, b in pairs.tolist():
        if pop.network(0).kind == "resnet":
            limits.append([min(u, v) for u, v in zip(pop.widths[a], pop.widths[b])])
            continue
        da, db = (pop.in_features, *pop.widths[a], pop.classes), (pop.in_features, *pop.widths[b], pop.classes)
        limits.append([min(da[l], da[l + 1], db[l], db[l + 1]) for l in range(len(da) - 1)])
    lim = torch.tensor(limits, dtype=torch.float64)
    u = torch.rand(lim.shape, generator=generator, dtype=torch.float64)
    return torch.minimum(1 + (u * lim).floor(), lim).long().tolist()


def reference_block(net, l: int, cut: list[int]) -> tuple[int, int]:
    """The donor's block of layer ``l``: on a chain the first ``cut[l]`` units and the inputs
    they feed (all the image's channels when fewer); on a residual network the first cut of the
    group written by the first cut of the group read (the image and the classes whole)."""
    w = net.layers[l][0]
    if net.kind != "resnet":
        c = cut[l]
        return c, min(c, w.shape[1]) if l == 0 else len(net.input_columns(l, torch.arange(c)))
    writes, reads = net.layer_groups()[l]
    return (w.shape[0] if writes is None else cut[writes]), (w.shape[1] if reads is None else cut[reads])


@KIND
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("copies", ["torch", pytest.param("native", marks=pytest.mark.skipif(
    c_library.compiler() is None, reason="no C compiler"))])
def test_crossover_follows_the_single_cut_rule_written_out_per_network(kind, seed, copies):
    pop = l1_population(KINDS[kind](seed), 8, 1.0, 0.4)
    pairs = select_pairs(torch.randn(8, generator=gen(seed)), gen(seed + 10))
    before = [[(w.clone(), b.clone()) for w, b in pop.network(i).layers] for i in range(pop.size)]
    cuts = reference_cuts(pop, pairs, gen(seed))
    expected = []
    for (a, b), cut in zip(pairs.tolist(), cuts):
        for bulk, donor in ((b, a), (a, b)):
            child = []
            for l, ((w, bias), (dw, db)) in enumerate(zip(before[bulk], before[donor])):
                c, cols = reference_block(pop.network(bulk), l, cut)
                w, bias = w.clone(), bias.clone()
                w[:c, :cols], bias[:c] = dw[:c, :cols], db[:c]
                child.append((w, bias))
            expected.append(child)
    children = recombine(pop, pairs, gen(seed), use_native=copies == "native")
    assert children.size == pop.size
    for j, want in enumerate(expected):
        got = children.network(j).layers
        assert all(torch.equal(w, v) and torch.equal(b, c) for (w, b), (v, c) in zip(got, want)), j
    for i in range(pop.size):                              # the parents are left alone
        assert all(torch.equal(w, v) for (w, _), (v, _) in zip(pop.network(i).layers, before[i]))


@KIND
def test_mutation_scales_each_weight_of_the_chosen_and_nothing_else(kind):
    pop = l1_population(KINDS[kind](), 6, 1.0, 0.5)
    before = [[(w.clone(), b.clone()) for w, b in pop.network(i).layers] for i in range(pop.size)]
    assert mutate_(pop, 0.0, 0.9, 1.1, gen(0)) == []
    chosen = mutate_(pop, 0.5, 0.9, 1.1, gen(1))
    assert 0 < len(chosen) < pop.size
    for i in range(pop.size):
        for (w, b), (w0, b0) in zip(pop.network(i).layers, before[i]):
            assert torch.equal(b, b0)
            if i not in chosen:
                assert torch.equal(w, w0)
                continue
            ratio = w[w0 != 0] / w0[w0 != 0]
            assert ((ratio > 0.9 - 1e-6) & (ratio < 1.1 + 1e-6)).all() and ratio.std() > 0


@KIND
@pytest.mark.parametrize("measure", [TSNE, LinearCKA])
@pytest.mark.parametrize("features,compression", [("flat", "units"), ("pooled", "macs")])
def test_the_evaluator_equals_the_per_network_reference(kind, measure, features, compression):
    parent = KINDS[kind]()
    pop = l1_population(parent, 6, 0.9, 0.3)
    g = gen(4)
    batches = [(torch.rand(40, FEATURES, generator=g), torch.randint(0, parent.classes, (40,), generator=g))]
    settings = dict(features=features, compression=compression)
    fast = Evaluator(parent, batches, measure(), **settings).evaluate(pop, 0)
    ref = ReferenceEvaluator(parent, batches, measure(), **settings).evaluate(pop, 0)
    torch.testing.assert_close(fast.accuracy, ref.accuracy)
    assert torch.equal(fast.compression, ref.compression)
    assert float(fast.compression[-1]) == pytest.approx(pop.network(5).size(compression) / parent.size(compression))
    torch.testing.assert_close(fast.similarity, ref.similarity, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"mlp"}))
@pytest.mark.parametrize("measure", [TSNE, LinearCKA])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bfloat16_forward_passes_read_as_float32s_within_their_rounding(kind, measure, seed):
    """``evolution.precision=bfloat16``: the population's and the parent's passes under autocast.
    Measured on these kinds and seeds: accuracies within 2 of 40 images of float32's, similarities
    within 0.03 (of 0.4-2.1); the bounds below are twice that. The numbers do change (bfloat16 ran)."""
    parent = KINDS[kind](seed)
    pop = l1_population(parent, 6, 0.9, 0.3)
    g = gen(4 + seed)
    batches = [(torch.rand(40, FEATURES, generator=g), torch.randint(0, parent.classes, (40,), generator=g))]
    fp32 = Evaluator(parent, batches, measure()).evaluate(pop, 0)
    bf16 = Evaluator(parent, batches, measure(), precision="bfloat16").evaluate(pop, 0)
    assert bf16.similarity.dtype == fp32.similarity.dtype == torch.float32
    assert float((bf16.accuracy - fp32.accuracy).abs().max()) <= 4 / 40 + 1e-6
    torch.testing.assert_close(bf16.similarity, fp32.similarity, rtol=0.05, atol=0.06)
    assert not torch.equal(bf16.similarity, fp32.similarity)
    assert torch.equal(bf16.compression, fp32.compression)


@KIND
@pytest.mark.parametrize("size", ["units", "params", "macs"])
def test_sizes_are_the_counts_of_the_module(kind, size):
    net = l1_population(KINDS[kind](), 2, 0.6, 0.6).network(0)
    module = net.to_module()
    counts = {"units": sum(net.units), "params": sum(p.numel() for p in module.parameters()),
              "macs": counted_macs(net)}
    assert net.size(size) == counts[size]


@KIND
def test_activation_floats_is_the_largest_output_of_the_modules_layers(kind):
    """What :func:`accuracy` sizes its chunks by: the largest tensor any layer of the module makes
    (hooks on every leaf; views of the input, such as a Flatten's, make none), and a chunked
    accuracy counts what a single pass counts."""
    net = l1_population(KINDS[kind](), 2, 0.6, 0.6).network(0)
    module = net.to_module().eval()
    largest = []

    def made(m, i, o):
        largest.append(0 if o.data_ptr() == i[0].data_ptr() else o[0].numel())

    hooks = [m.register_forward_hook(made) for m in module.modules() if not list(m.children())]
    x = torch.randn(3, net.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    assert net.activation_floats() == max(largest)
    y = torch.arange(3) % net.classes
    assert accuracy(net, x, y, chunk=1) == accuracy(net, x, y) == int((logits(net, x).argmax(1) == y).sum()) / 3


@KIND
def test_a_network_file_round_trips_and_reads_as_a_checkpoint(kind, tmp_path):
    net = l1_population(KINDS[kind](), 2, 0.6, 0.6).network(1)
    save_network(net, tmp_path / "best_network.pt", extra={"seed": 3})
    for back in (load_network(tmp_path / "best_network.pt", expected=net.blueprint()),
                 read_checkpoint(tmp_path / "best_network.pt")[0]):
        assert back.kind == net.kind and back.units == net.units
        assert all(torch.equal(w, v) and torch.equal(b, c) for (w, b), (v, c) in zip(back.layers, net.layers))
    with pytest.raises(ValueError, match="expected"):
        load_network(tmp_path / "best_network.pt", expected=KINDS[kind]().blueprint())


@KIND
def test_an_evolution_keeps_its_size_and_children_take_their_parents_shapes(kind):
    parent = KINDS[kind]()
    g = gen(5)
    batches = [(torch.rand(20, FEATURES, generator=g), torch.randint(0, parent.classes, (20,), generator=g))
               for _ in range(3)]
    pop = l1_population(parent, 8, 0.9, 0.3)
    shapes = set(pop.widths)
    ecomp = EComp(Evaluator(parent, batches, TSNE(5.0)), Weights(1, 2, 1), MutationSpec(rate=0.5), gen(6))
    records = list(ecomp.run(pop, epochs=2))
    assert len(records) == 1 + 2 * len(batches) and ecomp.population.size == 8
    assert set(ecomp.population.widths) <= shapes
    best, mean = ecomp.pick_best()
    assert ecomp.population.network(best).kind == parent.kind and torch.isfinite(mean).all()


@KIND
def test_the_logged_model_code_computes_the_network_without_ecomp(kind, tmp_path):
    from mlflow.pyfunc import PythonModelContext

    from ecomp.app.network_model import Network

    net = l1_population(KINDS[kind](), 2, 0.6, 0.6).network(1)
    save_network(net, tmp_path / "best_network.pt")
    model = Network()
    model.load_context(PythonModelContext(artifacts={"network": str(tmp_path / "best_network.pt"),
                                                     "architecture": str(tmp_path / "best_network.pt.json")},
                                          model_config={}))
    x = torch.rand(7, FEATURES, generator=gen(8))
    want = logits(net, x).softmax(1)
    torch.testing.assert_close(torch.from_numpy(model.predict(None, x.numpy())), want, rtol=1e-5, atol=1e-6)


@KIND
@pytest.mark.parametrize("keep", [0.75, 0.5])
def test_torch_pruning_l1_is_the_initial_population_at_the_same_keep(kind, keep):
    from ecomp.methods.pruning import IMPORTANCES, structured_prune

    parent = KINDS[kind]()
    ours = l1_population(parent, 1, keep, keep).network(0)
    theirs = structured_prune(parent, keep, "l1")
    assert theirs.units == ours.units
    for (w, b), (v, c) in zip(theirs.layers, ours.layers):
        torch.testing.assert_close(w, v, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b, c, rtol=1e-6, atol=1e-6)
    x = torch.rand(9, FEATURES, generator=gen(2))
    for importance in IMPORTANCES:                        # every criterion prunes whole groups consistently
        data = (x, torch.randint(0, parent.classes, (9,), generator=gen(3)))
        net = structured_prune(parent, keep, importance, data)
        assert net.units == ours.units and torch.isfinite(logits(net, x)).all()
