"""The fast evaluator gives the reference path's numbers; the whole loop is reproducible."""

from __future__ import annotations

import pytest
import torch

from conftest import random_layers, random_mlp
from ecomp.kernels import native
from ecomp.core.evolution import EComp, MutationSpec
from ecomp.core.fitness import PARTS, Evaluator, ReferenceEvaluator, Weights, needed_parts
from ecomp.core.initialiser import l1_population
from ecomp.core.mutation import mutate_
from ecomp.kernels.forward import forward
from ecomp.measures.tsne import TSNE
from ecomp.kernels.backend import resolve
from ecomp.kernels import c_library


# Every test of the fast evaluator runs with both similarity kernels (ecomp.kernels.native and the
# PyTorch path): each must give the reference path's numbers.
KERNELS = pytest.mark.parametrize("kernels", [
    pytest.param("native", marks=pytest.mark.skipif(c_library.compiler() is None, reason="no C compiler")), "torch"])


def problem(seed: int = 0, n_batches: int = 3, batch: int = 40, widths=(30, 24, 24, 5)):
    g = torch.Generator().manual_seed(seed)
    parent = random_mlp(list(widths), g)
    batches = [(torch.rand(batch, widths[0], generator=g), torch.randint(0, widths[-1], (batch,), generator=g))
               for _ in range(n_batches)]
    return parent, batches


def history(evaluator_cls, seed=0, kernels="auto", **kw):
    parent, batches = problem(**kw)
    ev = evaluator_cls(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels)))
    ecomp = EComp(ev, Weights(1.0, 2.0, 1.0), MutationSpec(0.2, 0.9, 1.1), torch.Generator().manual_seed(seed))
    pop = l1_population(parent, 8, 0.9, 0.3)
    hist = [r.metrics for r in ecomp.run(pop, epochs=2)]
    return hist, ecomp.pick_best()[0]


@KERNELS
def test_fast_parts_equal_reference_parts(kernels):
    parent, batches = problem()
    pop = l1_population(parent, 8, 0.9, 0.3)
    fast = Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels))).evaluate(pop, 1)
    ref = ReferenceEvaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", "torch"))).evaluate(pop, 1)
    assert torch.equal(fast.accuracy, ref.accuracy.float())
    assert torch.equal(fast.compression, ref.compression)
    assert torch.allclose(fast.similarity.double(), ref.similarity.double(), rtol=1e-4, atol=1e-7)
    assert (ref.similarity[:-1] >= 0).all()


@KERNELS
def test_fast_history_equals_reference_history(kernels):
    fast, best_fast = history(Evaluator, kernels=kernels)
    ref, best_ref = history(ReferenceEvaluator)
    assert len(fast) == len(ref) == 7       # generation 0 + 2 epochs x 3 batches
    for f, r in zip(fast, ref):
        for k in f:
            assert abs(f[k] - r[k]) <= 1e-4 * max(1.0, abs(r[k])), k
    assert best_fast == best_ref


@KERNELS
def test_same_seed_same_history_different_seed_differs(kernels):
    a, _ = history(Evaluator, seed=1, kernels=kernels)
    b, _ = history(Evaluator, seed=1, kernels=kernels)
    c, _ = history(Evaluator, seed=2, kernels=kernels)
    assert a == b
    assert a != c


@KERNELS
def test_similarity_layer_subset_and_three_hidden_layers(kernels):
    parent, batches = problem(widths=(30, 16, 16, 16, 5))
    pop = l1_population(parent, 6, 1.0, 0.4)
    full = Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels))).evaluate(pop, 0).similarity
    parts = [Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels)), layers=[l]).evaluate(pop, 0).similarity for l in range(3)]
    assert torch.allclose(full, sum(parts), rtol=1e-5)
    assert float(full[0]) < 1e-3     # the first individual keeps every neuron: identical to the parent


@KERNELS
def test_degenerate_networks_and_huge_weights_stay_finite(kernels):
    """Width-1 children, dead ReLUs (all-zero activations) and fitness weights of 1000."""
    parent, batches = problem(widths=(30, 16, 16, 5))
    w0, b0 = parent.layers[0]
    parent.layers[0] = (w0, b0 - 100.0)            # every first-layer unit dead on every input
    pop = l1_population(parent, 6, 1.0, 1 / 16)
    assert pop.widths[-1] == (1, 1)
    ev = Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels)))
    for k in range(len(batches)):
        parts = ev.evaluate(pop, k)
        fit = parts.fitness(Weights(1000.0, 1000.0, 1000.0))
        assert torch.isfinite(parts.similarity).all() and torch.isfinite(fit).all()
    ecomp = EComp(ev, Weights(1000.0, 1000.0, 1000.0), MutationSpec(0.5, 0.9, 1.1), torch.Generator().manual_seed(0))
    records = list(ecomp.run(pop, epochs=1))
    assert all(all(v == v and abs(v) != float("inf") for v in r.metrics.values()) for r in records)


@KERNELS
def test_evaluate_many_equals_one_batch_at_a_time(kernels):
    """The final pick forwards several batches at once; the per-batch numbers must not change."""
    parent, batches = problem(n_batches=4)
    pop = l1_population(parent, 8, 0.9, 0.3)
    ev = Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels)))
    many = ev.evaluate_many(pop, [0, 1, 2, 3])
    for k, parts in enumerate(many):
        one = Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels))).evaluate(pop, k)
        assert torch.equal(parts.accuracy, one.accuracy)
        assert torch.allclose(parts.similarity, one.similarity, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weights, needed", [((0.0, 0.0, 1.0), set()), ((1.0, 0.0, 0.0), {"accuracy"}),
                                             ((1.0, 0.0, 1.0), {"accuracy"}), ((0.0, 2.0, 1.0), {"similarity"}),
                                             ((1.0, 2.0, 1.0), {"accuracy", "similarity"})])
def test_the_final_pick_skips_only_parts_with_zero_weight_and_finds_the_same_bits(weights, needed):
    """The pick computes no part whose weight is zero; its means must equal, bit for bit, those
    computed from every part, and the evolution's records must still hold every part."""
    parent, batches = problem(n_batches=4)
    w = Weights(*weights)
    ev = Evaluator(parent, batches, TSNE(10.0))
    calls = []
    evaluate_many = ev.evaluate_many
    ev.evaluate_many = lambda pop, ks, parts=PARTS: calls.append(parts) or evaluate_many(pop, ks, parts)
    ecomp = EComp(ev, w, MutationSpec(0.2, 0.9, 1.1), torch.Generator().manual_seed(0))
    records = list(ecomp.run(l1_population(parent, 8, 0.9, 0.3), epochs=1))
    assert all(r.metrics["similarity_mean"] > 0 and r.metrics["accuracy_mean"] > 0 for r in records)
    calls.clear()
    best, mean = ecomp.pick_best(group=3)
    assert calls == [needed] * 2 and needed_parts(w) == needed
    total = torch.zeros(8, dtype=torch.float64)
    for parts in Evaluator(parent, batches, TSNE(10.0)).evaluate_many(ecomp.population, [0, 1, 2, 3]):
        total += parts.fitness(w).double()
    assert torch.equal(mean, total / 4) and best == int((total / 4).argmax())


@KERNELS
def test_one_architecture_population_uses_the_batched_path_and_matches_the_oracle(kernels):
    """Once every network has the same widths, forward and Gram products run batched over
    the population; the numbers must stay those of the loop and of the reference path."""
    parent, batches = problem(widths=(30, 16, 16, 16, 5))
    pop = l1_population(parent, 6, 0.75, 0.75)                 # six 12-12-12 networks
    mutate_(pop, 1.0, 0.5, 1.5, torch.Generator().manual_seed(3))   # make them differ
    x = batches[0][0]
    logits_b, hidden_b, stacked = forward(pop, x)
    logits_l, hidden_l, none = forward(pop, x, batched=False)
    assert stacked is not None and none is None
    assert torch.allclose(logits_b, logits_l, rtol=1e-5, atol=1e-5)
    for lb, ll in zip(hidden_b, hidden_l):
        for a, b in zip(lb, ll):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    fast = Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels))).evaluate_many(pop, [0, 1, 2])
    for k, parts in enumerate(fast):
        ref = ReferenceEvaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", "torch"))).evaluate(pop, k)
        assert torch.equal(parts.accuracy, ref.accuracy.float())
        assert torch.allclose(parts.similarity.double(), ref.similarity.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(c_library.compiler() is None, reason="crossover in place needs the native kernels")
@KERNELS
def test_in_place_generations_give_the_history_of_copied_ones(kernels):
    """A one-architecture population evolves in place (children stored out of order over their
    parents): forward passes, similarities, fitness and the final pick must be those of the
    loop that copies every generation into storage of its own."""
    parent, batches = problem(widths=(30, 16, 16, 5))
    results = {}
    for in_place in (True, False):
        ev = Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels)))
        ecomp = EComp(ev, Weights(1.0, 2.0, 1.0), MutationSpec(0.2, 0.9, 1.1), torch.Generator().manual_seed(4),
                      in_place=in_place)
        pop = l1_population(parent, 8, 0.75, 0.75)              # one architecture from the start
        hist = [r.metrics for r in ecomp.run(pop, epochs=3)]
        results[in_place] = hist, ecomp.pick_best(), ecomp.population
    (h_in, (best_in, fit_in), pop_in), (h_copy, (best_copy, fit_copy), pop_copy) = results[True], results[False]
    assert pop_in.slots is not None and pop_copy.slots is None    # the in-place path really ran
    assert h_in == h_copy and best_in == best_copy and torch.equal(fit_in, fit_copy)


def test_forward_of_out_of_order_storage_is_in_individual_order():
    from ecomp.nets.population import Population
    parent, batches = problem(widths=(30, 16, 16, 5))
    pop = l1_population(parent, 6, 0.75, 0.75)
    mutate_(pop, 1.0, 0.5, 1.5, torch.Generator().manual_seed(3))
    order = [4, 2, 0, 5, 1, 3]
    moved = Population(pop.widths, pop.first_w, pop.first_b, pop.layer_w, pop.layer_b, slots=order)
    in_order = Population.from_individuals([moved.individual(i) for i in range(6)])
    x = batches[0][0]
    for batched in (True, False):
        logits_m, hidden_m, _ = forward(moved, x, batched=batched)
        logits_o, hidden_o, _ = forward(in_order, x, batched=batched)
        assert torch.equal(logits_m, logits_o)
        assert all(torch.equal(a, b) for lm, lo in zip(hidden_m, hidden_o) for a, b in zip(lm, lo))
    for kernels in ("torch", "native") if c_library.compiler() else ("torch",):
        ev = Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", kernels)))
        a, b = ev.evaluate(moved, 1), ev.evaluate(in_order, 1)
        assert torch.equal(a.accuracy, b.accuracy) and torch.equal(a.similarity, b.similarity)


@pytest.mark.parametrize("uniform", [False, True])
def test_forward_into_a_workspace_gives_the_same_numbers(uniform):
    """The evaluator's reused first-layer storage (``Workspace``) changes no number; it grows
    for a larger pass and the results of a call live until the next one."""
    from ecomp.kernels.forward import Workspace

    parent, batches = problem(widths=(30, 16, 16, 5))
    pop = l1_population(parent, 6, 0.75, 0.75 if uniform else 0.3)
    ws = Workspace()
    for x in (batches[0][0], torch.cat([b[0] for b in batches[:3]]), batches[1][0]):
        fresh = forward(pop, x)
        reused = forward(pop, x, workspace=ws)
        assert ws.buffer.numel() >= sum(w[0] for w in pop.widths) * x.shape[0]
        assert torch.equal(fresh[0], reused[0])
        assert all(torch.equal(a, b) for la, lb in zip(fresh[1], reused[1]) for a, b in zip(la, lb))
