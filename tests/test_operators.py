"""Selection, recombination and mutation on tiny populations: shapes, invariants, determinism."""

from __future__ import annotations

import pytest
import torch

from conftest import random_layers, random_mlp
from ecomp.kernels import native
from ecomp.core.initialiser import l1_population
from ecomp.core.mutation import mutate_
from ecomp.nets.population import Population
from ecomp.core.recombination import recombine
from ecomp.core.selection import select_pairs, selection_probabilities
from ecomp.kernels import c_library


def tiny_population(seed: int = 0, size: int = 6, n_hidden: int = 2) -> Population:
    g = torch.Generator().manual_seed(seed)
    parent = random_mlp([12, *[8] * n_hidden, 3], g)
    return l1_population(parent, size, 1.0, 0.25)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Recombination runs through ecomp.kernels.native when it is built, else through PyTorch slices: both are tested.
PATHS = pytest.mark.parametrize("use_native", [
    pytest.param(True, marks=pytest.mark.skipif(c_library.compiler() is None, reason="no C compiler")), False])


def test_selection_pairs_shape_and_determinism():
    f = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.0, 0.3])
    a, b = select_pairs(f, gen(1)), select_pairs(f, gen(1))
    assert a.shape == (3, 2) and torch.equal(a, b)
    assert ((a >= 0) & (a < 6)).all()
    assert not torch.equal(a, select_pairs(f, gen(2))) or not torch.equal(a, select_pairs(f, gen(3)))


def test_selection_follows_softmax():
    f = torch.tensor([0.0, 1.0, 2.0, 3.0])
    counts = torch.zeros(4)
    g = gen(0)
    for _ in range(2000):
        counts += torch.bincount(select_pairs(f, g).flatten(), minlength=4)
    expected = torch.softmax(f.double(), 0).float()
    assert torch.allclose(counts / counts.sum(), expected, atol=0.01)


@pytest.mark.parametrize("weight", [1.0, 1000.0, 1e6])
def test_selection_huge_fitness_stays_finite(weight):
    f = torch.tensor([0.1, 0.5, 0.2, 0.9]) * weight
    p = selection_probabilities(f)
    assert torch.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-12
    assert select_pairs(f, gen(0)).shape == (2, 2)


def test_selection_rejects_nan():
    with pytest.raises(FloatingPointError):
        select_pairs(torch.tensor([0.1, float("nan")]), gen(0))


@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_recombination_children_take_parents_shapes(n_hidden):
    pop = tiny_population(n_hidden=n_hidden)
    pairs = torch.tensor([[0, 5], [2, 3], [4, 4]])
    children = recombine(pop, pairs, gen(0))
    assert children.size == 6
    for k, (a, b) in enumerate(pairs.tolist()):
        assert children.widths[2 * k] == pop.widths[b]       # child 1 has parent 2's shape
        assert children.widths[2 * k + 1] == pop.widths[a]   # child 2 has parent 1's shape
        for child, shape_parent in ((2 * k, b), (2 * k + 1, a)):
            for (cw, cb), (pw, pb) in zip(children.individual(child), pop.individual(shape_parent)):
                assert cw.shape == pw.shape and cb.shape == pb.shape


@PATHS
def test_recombination_block_layout_matches_definition(use_native):
    pop = tiny_population()
    pairs = torch.tensor([[1, 4]])
    g = gen(3)
    from ecomp.core.recombination import draw_cuts
    cuts = draw_cuts(pop, pairs, gen(3))[0].tolist()
    children = recombine(pop, pairs, g, use_native=use_native)
    p1, p2 = pop.individual(1), pop.individual(4)
    c1, c2 = children.individual(0), children.individual(1)
    for l, c in enumerate(cuts):
        (w1, b1), (w2, b2) = p1[l], p2[l]
        expected_1 = torch.cat([torch.cat([w1[:c, :c], w2[:c, c:]], 1), w2[c:]], 0)
        expected_2 = torch.cat([torch.cat([w2[:c, :c], w1[:c, c:]], 1), w1[c:]], 0)
        assert torch.equal(c1[l][0], expected_1) and torch.equal(c2[l][0], expected_2)
        assert torch.equal(c1[l][1], torch.cat([b1[:c], b2[c:]]))
        assert torch.equal(c2[l][1], torch.cat([b2[:c], b1[c:]]))


@PATHS
def test_recombination_cut_ranges_and_parents_untouched(use_native):
    pop = tiny_population()
    before = [[t.clone() for wb in pop.individual(i) for t in wb] for i in range(pop.size)]
    from ecomp.core.recombination import draw_cuts
    pairs = torch.tensor([[0, 5], [1, 2], [3, 4]])
    for s in range(50):
        cuts = draw_cuts(pop, pairs, gen(s))
        for (a, b), c in zip(pairs.tolist(), cuts.tolist()):
            h = min(pop.widths[a][0], pop.widths[b][0])
            assert 1 <= c[0] <= min(h, 12) and 1 <= c[1] <= h and 1 <= c[2] <= min(h, 3)
        recombine(pop, pairs, gen(s), use_native=use_native)
    after = [[t for wb in pop.individual(i) for t in wb] for i in range(pop.size)]
    assert all(torch.equal(x, y) for bx, by in zip(before, after) for x, y in zip(bx, by))


def test_recombination_same_seed_same_children():
    pop = tiny_population()
    pairs = torch.tensor([[0, 5], [1, 2], [3, 4]])
    a, b = recombine(pop, pairs, gen(9)), recombine(pop, pairs, gen(9))
    assert torch.equal(a.first_w, b.first_w)
    assert all(torch.equal(x[0], y[0]) for i in range(a.size) for x, y in zip(a.rest[i], b.rest[i]))


@pytest.mark.skipif(c_library.compiler() is None, reason="no C compiler")
@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_native_and_torch_recombination_give_identical_generations(n_hidden):
    """Ten generations (children become parents, mutation in between) through both paths,
    into two recycled first-layer buffers as EComp.run passes them (the native path then
    writes whole rows with streaming stores)."""
    pops = {True: tiny_population(size=8, n_hidden=n_hidden), False: tiny_population(size=8, n_hidden=n_hidden)}
    gens = {True: gen(5), False: gen(5)}
    rows = 8 * max(w[0] for w in pops[True].widths)
    buffers = {k: [torch.empty(rows, 12) for _ in range(2)] for k in (True, False)}
    for _ in range(10):
        for use_native in (True, False):
            pairs = select_pairs(torch.randn(8, generator=gen(_)), gens[use_native])
            child = recombine(pops[use_native], pairs, gens[use_native], out=buffers[use_native][_ % 2],
                              use_native=use_native)
            assert child.first_w.data_ptr() == buffers[use_native][_ % 2].data_ptr()
            mutate_(child, 0.3, 0.9, 1.1, gens[use_native])
            pops[use_native] = child
        a, b = pops[True], pops[False]
        assert a.widths == b.widths and torch.equal(a.first_w, b.first_w) and torch.equal(a.first_b, b.first_b)
        assert all(torch.equal(x, y) for i in range(a.size) for la, lb in zip(a.rest[i], b.rest[i])
                   for x, y in zip(la, lb))


def test_mutation_scales_weights_within_range_and_not_biases():
    pop = tiny_population()
    before = [[(w.clone(), b.clone()) for w, b in pop.individual(i)] for i in range(pop.size)]
    chosen = mutate_(pop, 1.0, 0.9, 1.1, gen(0))
    assert chosen == list(range(pop.size))
    for i in range(pop.size):
        for (w0, b0), (w1, b1) in zip(before[i], pop.individual(i)):
            ratio = w1[w0 != 0] / w0[w0 != 0]
            assert ((ratio >= 0.9 - 1e-6) & (ratio <= 1.1 + 1e-6)).all()
            assert ratio.std() > 0            # each weight has its own factor
            assert torch.equal(b0, b1)


def test_mutation_rate_zero_changes_nothing_and_rate_is_respected():
    pop = tiny_population(size=100)
    weights = [t.clone() for t in (pop.first_w, *pop.layer_w)]
    assert mutate_(pop, 0.0, 0.9, 1.1, gen(0)) == []
    assert all(torch.equal(a, b) for a, b in zip(weights, (pop.first_w, *pop.layer_w), strict=True))
    n = 0
    for s in range(20):                          # 2000 draws at rate 0.1
        pop = tiny_population(size=100)
        before = [[(w.clone(), b.clone()) for w, b in pop.individual(i)] for i in range(pop.size)]
        chosen = mutate_(pop, 0.1, 0.9, 1.1, gen(s))
        n += len(chosen)
        for i in range(pop.size):
            for (w, b), (w0, b0) in zip(pop.individual(i), before[i], strict=True):
                assert torch.equal(b, b0), (s, i)                  # biases are never mutated
                if i not in chosen:                                # nor is an individual not reported
                    assert torch.equal(w, w0), (s, i)
                    continue
                # every layer of a reported individual: its weights scaled by factors in [0.9, 1.1], not all 1
                factor = w[w0 != 0] / w0[w0 != 0]
                assert factor.numel() > 0 and not torch.all(factor == 1), (s, i)
                assert 0.9 - 1e-5 <= float(factor.min()) and float(factor.max()) <= 1.1 + 1e-5, (s, i)
    assert 120 < n < 280


def test_mutation_same_seed_same_result():
    a, b = tiny_population(), tiny_population()
    mutate_(a, 0.5, 0.9, 1.1, gen(4))
    mutate_(b, 0.5, 0.9, 1.1, gen(4))
    assert torch.equal(a.first_w, b.first_w)


@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_population_packs_each_layer_and_its_views_are_the_individuals(n_hidden):
    g = gen(4)
    individuals = [random_layers([12, *[w] * n_hidden, 3], g) for w in (5, 8, 2)]
    pop = Population.from_individuals(individuals)
    assert len(pop.layer_w) == n_hidden and pop.classes == 3
    for i, ind in enumerate(individuals):
        assert all(torch.equal(x, y) for (a, b), (c, d) in zip(pop.individual(i), ind) for x, y in ((a, c), (b, d)))
    pop.rest[1][-1][0][0, 0] = 7.0                          # views: writing one writes the packed buffer
    assert float(pop.layer_w[-1][pop.w_offsets[-1][1]]) == 7.0
    with pytest.raises(AssertionError, match="does not match widths"):
        Population(pop.widths, pop.first_w, pop.first_b, pop.layer_w[:-1] + [pop.layer_w[-1][:-1]], pop.layer_b)
    uniform = Population.from_individuals([random_layers([12, *[4] * n_hidden, 3], g) for _ in range(3)])
    for l in range(n_hidden):
        w, b = uniform.stacked(l)                          # (pop, out, in) views of the packed layer
        assert w.data_ptr() == uniform.layer_w[l].data_ptr()
        assert all(torch.equal(w[i], uniform.rest[i][l][0]) and torch.equal(b[i], uniform.rest[i][l][1])
                   for i in range(3))


@pytest.mark.skipif(c_library.compiler() is None, reason="no C compiler")
def test_native_recombine_rejects_bad_arguments_in_one_line():
    a = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="expected 1 addresses"):
        native.recombine((a, a), (a, a), (a, torch.zeros(2, dtype=torch.int64)), [1], [1], [1], [1])
    with pytest.raises(ValueError, match=r"every cut must lie in \[0, rows\]"):
        native.recombine((a, a), (a, a), (a, a), [2], [3], [3], [4])
    with pytest.raises(ValueError, match=r"every cut must lie in \[0, rows\]"):          # the donor is narrower
        native.recombine((a, a), (a, a), (a, a), [4], [4], [2], [1], cut_cols=[3])


def uniform_population(size: int = 8, n_hidden: int = 2, seed: int = 0) -> Population:
    """``size`` networks of one architecture (6 units per hidden layer), all different."""
    g = gen(seed)
    pop = l1_population(random_mlp([12, *[8] * n_hidden, 3], g), size, 0.75, 0.75)
    mutate_(pop, 1.0, 0.5, 1.5, g)
    return pop


def same_individuals(a: Population, b: Population) -> bool:
    return a.widths == b.widths and all(torch.equal(x, y) for i in range(a.size)
                                        for la, lb in zip(a.individual(i), b.individual(i)) for x, y in zip(la, lb))


@pytest.mark.skipif(c_library.compiler() is None, reason="no C compiler")
@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_in_place_recombination_gives_the_children_of_the_copy(n_hidden):
    """Ten generations of a one-architecture population, in place (children over their parents'
    storage, out of order) and by copy: the same individuals, bit for bit, every generation."""
    pops = {True: uniform_population(n_hidden=n_hidden), False: uniform_population(n_hidden=n_hidden)}
    gens = {True: gen(5), False: gen(5)}
    shuffled = 0
    for step in range(10):
        pairs = select_pairs(torch.randn(8, generator=gen(step)), gen(100 + step))
        parents = dict(pops)
        for in_place in (True, False):
            parent = pops[in_place]
            child = recombine(parent, pairs, gens[in_place], in_place=in_place)
            assert (child.first_w.data_ptr() == parent.first_w.data_ptr()) == in_place
            assert all((c.data_ptr() == p.data_ptr()) == in_place for c, p in zip(child.layer_w, parent.layer_w))
            mutate_(child, 0.3, 0.9, 1.1, gens[in_place])
            pops[in_place] = child
        assert same_individuals(pops[True], pops[False])
        shuffled += pops[True].slots is not None
        # the parent of an in-place generation is retired: its views would show the children
        with pytest.raises(RuntimeError, match="reused by its children"):
            parents[True].individual(0)
        with pytest.raises(RuntimeError, match="reused by its children"):
            recombine(parents[True], pairs, gen(0), in_place=True)
        assert parents[False].individual(0)   # a copied generation's parents stay usable
    assert shuffled >= 5                      # the test exercised out-of-order storage


def test_in_place_is_ignored_for_several_architectures_and_without_native():
    pop = tiny_population()                    # widths differ
    pairs = torch.tensor([[0, 5], [1, 2], [3, 4]])
    before = pop.first_w.clone()
    children = recombine(pop, pairs, gen(1), in_place=True)
    assert children.first_w.data_ptr() != pop.first_w.data_ptr() and torch.equal(pop.first_w, before)
    assert same_individuals(children, recombine(pop, pairs, gen(1)))
    uniform = uniform_population()
    pairs = torch.tensor([[0, 5], [1, 2], [3, 4], [6, 6]])
    children = recombine(uniform, pairs, gen(2), in_place=True, use_native=False)
    assert children.slots is None and uniform.individual(0)    # the parents stay usable


def test_population_slots_are_validated_and_views_follow_them():
    pop = uniform_population(size=4)
    order = [2, 0, 3, 1]
    moved = Population(pop.widths, pop.first_w, pop.first_b, pop.layer_w, pop.layer_b, slots=order)
    for i, s in enumerate(order):                 # individual i of `moved` is slot s, i.e. pop's individual s
        assert all(torch.equal(x, y) for la, lb in zip(moved.individual(i), pop.individual(s)) for x, y in zip(la, lb))
    assert Population(pop.widths, pop.first_w, pop.first_b, pop.layer_w, pop.layer_b, slots=[0, 1, 2, 3]).slots is None
    with pytest.raises(ValueError, match="permutation of 0..3"):
        Population(pop.widths, pop.first_w, pop.first_b, pop.layer_w, pop.layer_b, slots=[0, 0, 1, 2])
    mixed = tiny_population(size=4)
    with pytest.raises(ValueError, match="one architecture"):
        Population(mixed.widths, mixed.first_w, mixed.first_b, mixed.layer_w, mixed.layer_b, slots=order)


@pytest.mark.skipif(c_library.compiler() is None, reason="no C compiler")
def test_native_recombine_inplace_rejects_bad_arguments_in_one_line():
    w, b = torch.zeros(3, 4, 5), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="permutation of 0..2"):
        native.recombine_inplace(w, b, [0, 0, 1], [0, 1, 2], [0, 1, 2], [1, 1, 1])
    with pytest.raises(ValueError, match="no child copies from"):
        native.recombine_inplace(w, b, [1, 0, 2], [0, 1, 2], [0, 1, 2], [1, 1, 1])
    with pytest.raises(ValueError, match=r"every cut must lie in \[0, 4\]"):
        native.recombine_inplace(w, b, [0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 5, 1])
    with pytest.raises(ValueError, match="contiguous float32 CPU tensors"):
        native.recombine_inplace(w.double(), b, [0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 1, 1])
    with pytest.raises(ValueError, match="must be integers"):            # 0.2 and 1.2 would pass as 0 and 1
        native.recombine_inplace(w, b, [1, 0, 2], [0.2, 1.2, 2], [0, 1, 2], [1, 1, 1])
    with pytest.raises(ValueError, match="overlap"):
        native.recombine_inplace(w, w.view(-1)[:12].view(3, 4), [0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 1, 1])


@PATHS
@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_recycled_later_layer_buffers_give_the_same_children(use_native, n_hidden):
    """``layers_out`` (EComp.run's two alternating sets of later-layer buffers, so that a wide
    population's layers are not faulted in anew every generation) changes where the children
    live, never what they are; a buffer sharing the parents' storage or too small is not used."""
    pops = {k: tiny_population(size=8, n_hidden=n_hidden) for k in ("fresh", "recycled")}
    p0 = pops["fresh"]                     # children may be wider in total: size x the largest individual
    sizes = [(8 * max(wo[s + 1] - wo[s] for s in range(8)), 8 * max(bo[s + 1] - bo[s] for s in range(8)))
             for wo, bo in zip(p0.w_offsets, p0.b_offsets)]
    later = [[(torch.empty(nw), torch.empty(nb)) for nw, nb in sizes] for _ in range(2)]
    gens = {k: gen(7) for k in pops}
    for g_ in range(8):
        for k in pops:
            pairs = select_pairs(torch.randn(8, generator=gen(g_)), gens[k])
            child = recombine(pops[k], pairs, gens[k], use_native=use_native,
                              layers_out=later[g_ % 2] if k == "recycled" else None)
            if k == "recycled":
                assert all(w.data_ptr() == later[g_ % 2][l][0].data_ptr() for l, w in enumerate(child.layer_w))
            mutate_(child, 0.3, 0.9, 1.1, gens[k])
            pops[k] = child
        a, b = pops["fresh"], pops["recycled"]
        assert a.widths == b.widths and torch.equal(a.first_w, b.first_w)
        assert all(torch.equal(x, y) for x, y in zip(a.layer_w + a.layer_b, b.layer_w + b.layer_b))
    own = [(w, b) for w, b in zip(pops["recycled"].layer_w, pops["recycled"].layer_b)]   # the parents' storage
    small = [(torch.empty(1), torch.empty(1)) for _ in sizes]
    for bad in (own, small):
        pairs = select_pairs(torch.randn(8, generator=gen(99)), gen(1))
        expected = recombine(pops["fresh"], pairs, gen(2), use_native=use_native)
        got = recombine(pops["recycled"], pairs, gen(2), use_native=use_native, layers_out=bad)
        assert all(w.data_ptr() != o.data_ptr() for w, (o, _) in zip(got.layer_w, bad))
        assert all(torch.equal(x, y) for x, y in zip(expected.layer_w + expected.layer_b, got.layer_w + got.layer_b))


@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_gather_recombination_equals_the_other_paths(n_hidden):
    """The GPU path's crossover (one gather per layer through index tensors, no per-individual
    loop), run here on the CPU, gives the children of the slice path bit for bit, over generations
    with mutation in between, on mixed widths and on a population stored out of order."""
    pops = {k: tiny_population(size=8, n_hidden=n_hidden) for k in ("gather", "slices")}
    gens = {k: gen(11) for k in pops}
    for g_ in range(8):
        for k in pops:
            pairs = select_pairs(torch.randn(8, generator=gen(g_)), gens[k])
            child = recombine(pops[k], pairs, gens[k], use_native=False, use_gather=k == "gather")
            mutate_(child, 0.3, 0.9, 1.1, gens[k])
            pops[k] = child
        a, b = pops["gather"], pops["slices"]
        assert a.widths == b.widths and torch.equal(a.first_w, b.first_w) and torch.equal(a.first_b, b.first_b)
        assert all(torch.equal(x, y) for x, y in zip(a.layer_w + a.layer_b, b.layer_w + b.layer_b))
    uniform = l1_population(random_mlp([12, *[8] * n_hidden, 3], gen(3)), 8, 0.75, 0.75)
    stored = Population(uniform.widths, uniform.first_w, uniform.first_b, uniform.layer_w, uniform.layer_b,
                        slots=[3, 1, 0, 2, 7, 6, 5, 4])
    pairs = select_pairs(torch.randn(8, generator=gen(4)), gen(5))
    a = recombine(stored, pairs, gen(6), use_native=False, use_gather=True)
    b = recombine(stored, pairs, gen(6), use_native=False, use_gather=False)
    assert all(torch.equal(x, y) for i in range(8) for la, lb in zip(a.individual(i), b.individual(i))
               for x, y in zip(la, lb))


@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_take_and_concat_copy_individuals_like_from_individuals(n_hidden):
    """Elitism's copies (Population.take) and the next generation's assembly (concat) are
    index gathers; they must give what the per-individual path gave, bit for bit."""
    pop = tiny_population(size=8, n_hidden=n_hidden)
    picked = [5, 0, 5, 3]
    kept = pop.take(picked)
    expected = Population.from_individuals([pop.individual(i) for i in picked])
    both = Population.concat([pop, kept])
    expected_both = Population.from_individuals([pop.individual(i) for i in range(8)] + [pop.individual(i) for i in picked])
    for got, want in ((kept, expected), (both, expected_both)):
        assert got.widths == want.widths
        for x, y in zip([got.first_w, got.first_b, *got.layer_w, *got.layer_b],
                        [want.first_w, want.first_b, *want.layer_w, *want.layer_b]):
            assert torch.equal(x, y)
    kept.first_w.add_(1.0)                                     # copies: the source is untouched
    assert torch.equal(pop.first(5)[0], expected.first(0)[0])
