"""The GPU path's loop-free parts, run on the CPU against the CPU's own loops: the mixed-width
forward pass as zero-padded batched products (ecomp.kernels.padded) and the mutation through one index
tensor per layer. On a GPU they are the default (tests/test_cuda.py); here they are forced."""

from __future__ import annotations

import pytest
import torch

from conftest import random_layers, random_mlp
from ecomp.kernels import native
from ecomp.core.fitness import Evaluator
from ecomp.core.initialiser import l1_population
from ecomp.measures.cka import LinearCKA
from ecomp.core.mutation import mutate_
from ecomp.kernels.padded import forward_padded
from ecomp.kernels.forward import first_layer, forward
from ecomp.core.recombination import recombine
from ecomp.core.selection import select_pairs
from ecomp.measures.tsne import TSNE
from ecomp.kernels.backend import resolve
from ecomp.kernels import c_library


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixed(n_hidden: int, size: int = 9, seed: int = 0):
    parent = random_mlp([20, *[16 - 2 * l for l in range(n_hidden)], 4], gen(seed))
    pop = l1_population(parent, size, 1.0, 0.2)
    assert not pop.uniform
    return parent, pop


@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_padded_forward_equals_the_per_network_loop(n_hidden):
    _, pop = mixed(n_hidden)
    x = torch.rand(30, 20, generator=gen(1))
    logits_l, hidden_l, none = forward(pop, x, padded=False)
    logits_p, hidden_p, stacked = forward(pop, x, padded=True)
    assert none is None and len(stacked) == n_hidden
    assert torch.allclose(logits_p, logits_l, rtol=1e-5, atol=1e-6)
    for l in range(n_hidden):
        widest = max(w[l] for w in pop.widths)
        assert stacked[l].shape == (pop.size, widest, 30)
        for i in range(pop.size):
            assert hidden_p[l][i].shape == hidden_l[l][i].shape
            assert torch.allclose(hidden_p[l][i], hidden_l[l][i], rtol=1e-5, atol=1e-6)
            assert not stacked[l][i, pop.widths[i][l]:].any()          # zeros beyond the real units


@pytest.mark.parametrize("measure", ["tsne", "cka"])
def test_the_evaluator_on_padded_stacks_gives_the_loops_parts(measure):
    parent, pop = mixed(2, size=7)
    g = gen(2)
    batches = [(torch.rand(25, 20, generator=g), torch.randint(0, 4, (25,), generator=g)) for _ in range(3)]
    torch_backend = resolve("cpu", "torch")
    m = TSNE(8.0, backend=torch_backend) if measure == "tsne" else LinearCKA(torch_backend)
    loop = Evaluator(parent, batches, m)
    pad = Evaluator(parent, batches, m, padded=True)
    for a, b in zip(loop.evaluate_many(pop, [0, 1, 2]), pad.evaluate_many(pop, [0, 1, 2])):
        assert torch.equal(a.accuracy, b.accuracy) and torch.equal(a.compression, b.compression)
        assert torch.allclose(a.similarity, b.similarity, rtol=1e-4, atol=1e-6)


def test_the_padded_forward_refuses_a_population_stored_out_of_order_which_takes_the_batched_path():
    if c_library.compiler() is None:
        pytest.skip("crossover in place needs the native kernels")
    parent = random_mlp([20, 12, 10, 4], gen(0))
    pop = l1_population(parent, 8, 0.5, 0.5)                       # one architecture
    for s in range(5):
        pop = recombine(pop, select_pairs(torch.randn(8, generator=gen(s)), gen(s + 10)), gen(s + 20), in_place=True)
        if pop.slots is not None:
            break
    assert pop.slots is not None
    with pytest.raises(ValueError, match="individual order"):
        forward_padded(pop, first_layer(pop, torch.rand(5, 20)).relu_())
    _, _, stacked = forward(pop, torch.rand(5, 20), padded=True)   # one architecture: the batched path
    assert stacked[0].shape == (8, 6, 5)


@pytest.mark.parametrize("n_hidden", [1, 2, 3])
@pytest.mark.parametrize("uniform", [False, True])
def test_gathered_mutation_equals_the_loop_bit_for_bit(n_hidden, uniform):
    parent = random_mlp([20, *[16 - 2 * l for l in range(n_hidden)], 4], gen(0))
    pops = [l1_population(parent, 12, 0.6 if uniform else 1.0, 0.6 if uniform else 0.2) for _ in range(2)]
    g_loop, g_gath = gen(5), gen(5)
    chosen_loop = mutate_(pops[0], 0.5, 0.5, 1.5, g_loop, gathered=False)
    chosen_gath = mutate_(pops[1], 0.5, 0.5, 1.5, g_gath, gathered=True)
    assert chosen_loop == chosen_gath and 0 < len(chosen_loop) < 12
    a, b = pops
    for x, y in zip([a.first_w, a.first_b, *a.layer_w, *a.layer_b], [b.first_w, b.first_b, *b.layer_w, *b.layer_b]):
        assert torch.equal(x, y)
    assert torch.equal(torch.rand(3, generator=g_loop), torch.rand(3, generator=g_gath))   # same draws consumed
    untouched = l1_population(parent, 12, 0.6 if uniform else 1.0, 0.6 if uniform else 0.2)
    for i in range(12):
        same = all(torch.equal(w, u) for (w, _), (u, _) in zip(b.individual(i), untouched.individual(i)))
        assert same == (i not in chosen_gath)


def test_a_few_generations_on_padded_stacks_keep_the_loops_records(monkeypatch):
    """The whole loop with the padded forward pass (as on a GPU) against the CPU's loop: the same
    selections, so the same records up to float rounding."""
    import ecomp.kernels.forward
    from ecomp.core.evolution import EComp, MutationSpec
    from ecomp.core.fitness import Weights

    calls = []
    real = ecomp.kernels.forward.forward_padded
    monkeypatch.setattr(ecomp.kernels.forward, "forward_padded", lambda pop, z: calls.append(pop.size) or real(pop, z))

    parent = random_mlp([20, 16, 14, 4], gen(0))
    g = gen(3)
    batches = [(torch.rand(25, 20, generator=g), torch.randint(0, 4, (25,), generator=g)) for _ in range(4)]
    records = {}
    for padded in (False, True):
        ev = Evaluator(parent, batches, TSNE(8.0, backend=resolve("cpu", "torch")), padded=padded)
        ecomp = EComp(ev, Weights(1.0, 2.0, 1.0), MutationSpec(0.3, 0.9, 1.1), gen(4))
        records[padded] = [r.metrics for r in ecomp.run(l1_population(parent, 10, 1.0, 0.2), epochs=2)]
        records[padded].append({"best": float(ecomp.pick_best()[0])})
    assert len(calls) >= 3                        # generations of several architectures went padded
    for a, b in zip(records[False], records[True]):
        assert a.keys() == b.keys()
        assert all(abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])) for k in a), (a, b)
