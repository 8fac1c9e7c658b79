"""EComp's levers beyond the paper: selection pressure, elitism, and CKA as the similarity."""

from __future__ import annotations

import pytest
import torch

from conftest import random_layers, random_mlp
from ecomp.kernels import native
from ecomp.core.evolution import EComp, MutationSpec
from ecomp.core.fitness import Evaluator, ReferenceEvaluator, Weights
from ecomp.core.initialiser import l1_population
from ecomp.measures.cka import LinearCKA
from ecomp.kernels.forward import forward
from ecomp.core.selection import Selection, elites, roulette_draws, select_pairs, selection_probabilities, tournament_draws
from ecomp.measures.tsne import TSNE
from ecomp.kernels.backend import resolve
from ecomp.kernels import c_library
from test_evaluator import problem


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- selection ----------------------------------------------------------------------------------

def test_the_default_selection_is_the_papers_draw_for_draw():
    f = torch.randn(20, generator=gen(0))
    assert torch.equal(Selection().pairs(f, gen(1)), select_pairs(f, gen(1)))


@pytest.mark.parametrize("sel", [Selection(), Selection(temperature=0.1), Selection(kind="tournament", tournament_size=4),
                                 Selection(elite=2), Selection(kind="tournament", tournament_size=3, elite=4)])
def test_every_selection_gives_pairs_of_valid_indices_and_is_seeded(sel):
    f = torch.randn(12, generator=gen(0))
    pairs = sel.pairs(f, gen(3))
    assert pairs.shape == ((12 - sel.elite) // 2, 2) and pairs.dtype == torch.int64
    assert 0 <= int(pairs.min()) and int(pairs.max()) < 12
    assert torch.equal(pairs, sel.pairs(f, gen(3)))


def test_temperature_sharpens_the_roulette():
    f = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(selection_probabilities(f, 0.25), torch.softmax(f.double() * 4, 0))
    counts = {t: torch.bincount(roulette_draws(f, 20_000, gen(0), t), minlength=3) for t in (1.0, 0.1)}
    assert counts[0.1][2] > 0.99 * 20_000 > counts[1.0][2]


def test_tournaments_pick_the_fittest_entrant():
    f = torch.tensor([0.3, 0.1, 0.9, 0.5])
    assert torch.equal(tournament_draws(f, 50, gen(0), 1).unique(), torch.arange(4))    # size 1: uniform
    big = tournament_draws(f, 2_000, gen(0), 8)
    assert (big == 2).float().mean() > 0.85 and (big == 1).float().mean() < 0.001    # 1 - 0.75^8; 0.25^8
    entrants = torch.randint(4, (2_000, 8), generator=gen(0))
    assert torch.equal(big, entrants.gather(1, f[entrants].argmax(1, keepdim=True)).squeeze(1))


def test_elites_are_the_fittest_in_order():
    assert elites(torch.tensor([0.2, 0.9, 0.1, 0.9, 0.5]), 3) == [1, 3, 4]


def run(selection: Selection, seed: int = 0):
    parent, batches = problem()
    ev = Evaluator(parent, batches, TSNE(10.0))
    ecomp = EComp(ev, Weights(1.0, 2.0, 1.0), MutationSpec(0.5, 0.9, 1.1), gen(seed), selection=selection)
    pops, fits = [], []
    for _ in ecomp.run(l1_population(parent, 8, 0.9, 0.3), epochs=2):
        pops.append([[(w.clone(), b.clone()) for w, b in ecomp.population.individual(i)]
                     for i in range(ecomp.population.size)])
        fits.append(ecomp.fitness.clone())
    return pops, fits


def test_elites_pass_unchanged_and_the_population_keeps_its_size():
    pops, fits = run(Selection(temperature=0.5, elite=2))
    for before, after, f in zip(pops, pops[1:], fits):
        assert len(after) == 8
        for i in elites(f, 2):           # each elite is in the next generation, weight for weight
            assert any(all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(before[i], other))
                       for other in after)
    again, _ = run(Selection(temperature=0.5, elite=2))
    assert all(torch.equal(a, b) for p, q in zip(pops, again) for x, y in zip(p, q)
               for (a, _), (b, _) in zip(x, y))


# -- CKA ------------------------------------------------------------------------------------------

def score(measure, parent_acts, children, n):
    states = measure.prepare(parent_acts, n)
    return measure.score([[c[l] for c in children] for l in range(len(parent_acts))], None, states, n)


# A population of several widths scores through the C Gram kernel (native) or one product per
# network (torch): both must give the float64 formula's numbers.
CKA_KERNELS = pytest.mark.parametrize("kernels", [
    pytest.param("native", marks=pytest.mark.skipif(c_library.compiler() is None, reason="no C compiler")), "torch"])


@CKA_KERNELS
@pytest.mark.parametrize("widths", [(12, 7), (1, 5), (6, 1)])
def test_cka_equals_its_float64_formula(widths, kernels):
    g = gen(sum(widths))
    parent = [torch.rand(40, h, generator=g) for h in (9, 6)]
    children = [[torch.rand(40, widths[0], generator=g), torch.rand(40, widths[1], generator=g)] for _ in range(3)]
    children[1][0][:, 0] = 0.0                                       # a dead unit
    cka = LinearCKA(resolve("cpu", kernels))
    fast = score(cka, parent, children, 40)[0]
    ref = torch.tensor([cka.reference(cka.reference_prepare(parent), c) for c in children], dtype=torch.float64)
    assert torch.allclose(fast.double(), ref, rtol=1e-5, atol=1e-6)
    assert ((ref > 0) & (ref < 2)).all()


@CKA_KERNELS
def test_cka_is_zero_for_the_parent_itself_and_one_for_a_dead_layer(kernels):
    g = gen(0)
    parent = [torch.rand(30, 8, generator=g), torch.rand(30, 5, generator=g)]
    scaled = [parent[0] * 3.0, parent[1] + 1.0]                      # CKA ignores scale and shifts
    dead = [parent[0], torch.zeros(30, 5)]
    s = score(LinearCKA(resolve("cpu", kernels)), parent, [parent, scaled, dead], 30)[0]
    assert s[0].item() == pytest.approx(0.0, abs=1e-5) and s[1].item() == pytest.approx(0.0, abs=1e-5)
    assert s[2].item() == pytest.approx(1.0, abs=1e-5)
    assert LinearCKA().reference(LinearCKA().reference_prepare(parent), dead) == pytest.approx(1.0)


@CKA_KERNELS
def test_a_constant_layer_scores_one_and_large_means_stay_accurate(kernels):
    g = gen(1)
    parent = [torch.rand(50, 6, generator=g)]
    constant = [torch.full((50, 4), 0.37) + torch.zeros(50, 4)]        # relu(bias) behind a dead layer
    shifted = [torch.rand(50, 4, generator=g) + 30.0]
    cka = LinearCKA(resolve("cpu", kernels))
    s = score(cka, parent, [constant, shifted], 50)[0]
    ref = [cka.reference(cka.reference_prepare(parent), c) for c in (constant, shifted)]
    assert s[0].item() == 1.0 and ref[0] == 1.0
    assert s[1].item() == pytest.approx(ref[1], rel=1e-4)


def test_a_temperature_that_overflows_is_refused():
    with pytest.raises(FloatingPointError, match="temperature"):
        selection_probabilities(torch.tensor([2.0, 1.0, 0.5]), 1e-308)


def test_cka_batched_path_equals_the_loop_and_the_reference_evaluator():
    parent, batches = problem(widths=(30, 16, 16, 5))
    pop = l1_population(parent, 6, 0.5, 0.5)                         # one architecture: the batched path
    x = batches[0][0]
    _, hidden, stacked = forward(pop, x)
    assert stacked is not None
    cka = LinearCKA()
    states = cka.prepare([torch.addmm(parent.layers[0][1], x, parent.layers[0][0].T).relu()], 40)
    fast = Evaluator(parent, batches, measure=cka).evaluate(pop, 0).similarity
    ref = ReferenceEvaluator(parent, batches, measure=cka).evaluate(pop, 0).similarity
    assert torch.allclose(fast.double(), ref.double(), rtol=1e-4, atol=1e-6)
    loop = cka.score([hidden[0]], None, states, 40)
    batched = cka.score([hidden[0]], [stacked[0]], states, 40)
    assert torch.allclose(loop, batched, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_levers_are_tracked_runs_named_by_what_differs_from_the_paper(make_cfg, store):
    from mlflow.tracking import MlflowClient

    from ecomp.app.pipeline import run_experiment

    plain = run_experiment(make_cfg("seed=4", "tracking.enabled=false"))
    cka = run_experiment(make_cfg("seed=4", "similarity=cka", "operators.selection.temperature=0.2",
                                  "operators.selection.elite=2"), scenario="121")
    assert len(cka.history) == len(plain.history) and cka.history != plain.history
    assert 0 <= cka.history[-1]["similarity_mean"] <= 2                    # 1 - CKA on two layers
    client = MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("ecomp").experiment_id])[0]
    assert run.info.run_name == "121-elite2-similaritycka-temperature0.2-seed4"
    assert run.data.tags["variant"] == "121 [elite=2, similarity=cka, temperature=0.2]"
    assert run.data.tags["similarity"] == "cka" and run.data.tags["kernels"] in ("native", "torch")


@CKA_KERNELS
def test_cka_of_several_widths_on_several_batches_at_once_equals_one_batch_at_a_time(kernels):
    parent, batches = problem(widths=(30, 16, 12, 5))
    pop = l1_population(parent, 8, 0.9, 0.2)                         # several architectures
    ev = Evaluator(parent, batches, measure=LinearCKA(resolve("cpu", kernels)))
    together = ev.evaluate_many(pop, [0, 1, 2])
    ref = ReferenceEvaluator(parent, batches, measure=LinearCKA(resolve("cpu", "torch")))
    for k, parts in enumerate(together):
        assert torch.allclose(parts.similarity.double(), ref.evaluate(pop, k).similarity.double(),
                              rtol=1e-4, atol=1e-6)


def test_a_param_added_at_its_neutral_value_does_not_split_a_levers_pairs():
    """Runs logged before ``evolution.precision`` existed pair with later float32 runs (the config
    hash's neutral values, ecomp.app.config.HASH_NEUTRAL), but not with bfloat16 ones."""
    from experiments.report_data import base_of, setup_of

    old = {"seed": "0", "population.size": "100", "parent.hidden": "[256, 256]"}
    assert base_of(old) == base_of({**old, "evolution.precision": "float32"})
    assert base_of(old) != base_of({**old, "evolution.precision": "bfloat16"})
    assert setup_of(old) == setup_of({**old, "data.path": "None", "parent.depth": "None"})
