"""The width search (ecomp/widths, method=random_search, evolve_widths and bee_colony): the MACs budget
on every kind, the keep-vector operators against straightforward loops, adaptive BatchNorm, the data the
scores read, the returned networks' budget and one tracked run with its candidates' table."""

from __future__ import annotations

import csv
import dataclasses
import io

import pytest
import torch
from mlflow.tracking import MlflowClient

from ecomp.app.pipeline import run_experiment
from ecomp.core.selection import Selection
from ecomp.errors import ConfigError
from ecomp.kernels.backend import resolve
from ecomp.methods.base import Problem
from ecomp.methods.bee_colony import BeeColony
from ecomp.methods.evolve_widths import EvolveWidths
from ecomp.methods.pruning import structured_prune
from ecomp.methods.random_search import RandomSearch
from ecomp.methods.width_search import score_data
from ecomp.nets.data import Split, draw_run_data
from ecomp.nets.structure import accuracy, logits
from ecomp.nets.training import fine_tune
from ecomp.core.selection import roulette_draws
from ecomp.widths.operators import crossover, mutate, neighbour, next_generation, onlookers, standardised
from ecomp.widths.scores import ScoreData, available, score_class
from ecomp.widths.scores.adaptive_bn import conv_statistics, recalibrate
from ecomp.widths.space import WidthSpace

from kinds import FEATURES, KINDS

KIND = pytest.mark.parametrize("kind", sorted(KINDS))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one torch thread is several times faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labelled(parent, n: int, seed: int) -> Split:
    """``n`` random images labelled by the parent itself (so the parent scores 1.0 on them)."""
    x = torch.randn(n, FEATURES, generator=gen(seed))
    return Split(x, logits(parent, x).argmax(1))


# -- the space and its budget -----------------------------------------------------------------------
@KIND
@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_every_repaired_vector_meets_the_budget_and_its_network_has_those_macs(kind, target):
    parent = KINDS[kind]()
    space = WidthSpace(parent, target, 0.05 if kind != "mlp" else 0.08)
    g, met = gen(1), 0
    for _ in range(40):
        keep = space.repair(torch.rand(space.groups, generator=g, dtype=torch.float64) * 0.9 + 0.1)
        if keep is None:
            continue
        met += 1
        widths = space.widths(keep)
        net = space.network(widths)
        assert tuple(net.units) == widths
        ratio = net.size("macs") / parent.size("macs")          # the built network, not the blueprint
        assert ratio == pytest.approx(space.macs_ratio(widths)) and abs(ratio - target) <= space.tolerance + 1e-12
    assert met >= 30


def test_a_budget_no_network_meets_is_rejected_not_missed():
    parent = KINDS["cnn"]()
    space = WidthSpace(parent, 0.001, 0.0005)                  # below one unit per group
    assert space.repair(torch.full((space.groups,), 0.5, dtype=torch.float64)) is None
    with pytest.raises(ValueError, match="no keep vector meets MACs"):
        space.sample(gen(0), tries=5)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("keep", [0.3, 0.5, 0.75])
def test_a_uniform_keep_vector_is_exactly_l1_prunes_network(kind, keep):
    parent = KINDS[kind]()
    space = WidthSpace(parent)
    ours = space.network(space.widths(torch.full((space.groups,), keep, dtype=torch.float64)))
    theirs = structured_prune(parent, keep, "l1")
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(ours.layers, theirs.layers))


# -- the operators on keep vectors ----------------------------------------------------------------
def test_single_cut_crossover_is_the_straightforward_loop():
    keeps = torch.rand(6, 5, generator=gen(0), dtype=torch.float64)
    pairs = torch.tensor([[0, 3], [2, 2], [5, 1]])
    children = crossover(keeps, pairs, gen(7))
    cuts = torch.randint(1, 5, (3,), generator=gen(7)).tolist()        # the same draws
    expected = []
    for (i, j), c in zip(pairs.tolist(), cuts):
        a, b = keeps[i].tolist(), keeps[j].tolist()
        expected += [a[:c] + b[c:], b[:c] + a[c:]]
    assert children.tolist() == expected
    one = torch.rand(4, 1, generator=gen(1), dtype=torch.float64)       # one group: copies
    assert crossover(one, torch.tensor([[0, 1], [3, 2]]), gen(0)).flatten().tolist() == one[[0, 1, 3, 2]].flatten().tolist()


def test_mutation_is_the_straightforward_loop_and_leaves_its_input_alone():
    keeps = torch.rand(8, 4, generator=gen(2), dtype=torch.float64) * 0.9 + 0.05     # some fall below the floor
    before = keeps.clone()
    out = mutate(keeps, 0.5, 0.5, 1.5, gen(3), floor=0.1)
    g = gen(3)
    chosen = (torch.rand(8, generator=g) < 0.5).tolist()
    factors = (0.5 + torch.rand(8, 4, generator=g, dtype=torch.float64)).tolist()
    for i in range(8):
        for k in range(4):
            f = keeps[i, k].item() * factors[i][k] if chosen[i] else keeps[i, k].item()
            assert out[i, k].item() == pytest.approx(min(1.0, max(0.1, f)), abs=1e-15)
    assert torch.equal(keeps, before) and 0 < sum(chosen) < 8 and (out == 0.1).any() and (out == 1.0).any()
    assert torch.equal(mutate(keeps, 0.0, 0.5, 1.5, gen(3)), keeps)


def test_next_generation_keeps_the_elites_first_and_breeds_the_rest():
    keeps = torch.rand(10, 3, generator=gen(4), dtype=torch.float64)
    scores = torch.arange(10.0)                                          # 9 best, then 8
    nxt = next_generation(keeps, scores, Selection("roulette", 1.0, 2, 2), 0.0, 1.0, 1.0, gen(5))
    assert nxt.shape == (10, 3) and torch.equal(nxt[:2], keeps[[9, 8]])
    rows = {tuple(r) for r in keeps.tolist()}
    for child in nxt[2:].tolist():                                       # no mutation: genes from the parents
        assert all(any(abs(child[k] - r[k]) == 0 for r in rows) for k in range(3))
    z = standardised(torch.tensor([1.0, 2.0, 3.0]))
    assert z.mean().abs() < 1e-12 and z.std(unbiased=False).item() == pytest.approx(1.0)
    assert torch.equal(standardised(torch.ones(3)), torch.zeros(3, dtype=torch.float64))


def test_the_bee_colonys_move_is_the_straightforward_formula_and_leaves_its_input_alone():
    keeps = torch.rand(5, 4, generator=gen(6), dtype=torch.float64)
    before = keeps.clone()
    seen_groups, seen_others = set(), set()
    for seed in range(60):
        i = seed % 5
        out = neighbour(keeps, i, gen(seed), floor=0.1)
        g = gen(seed)                                                   # the same draws, by hand
        j = int(torch.randint(4, (1,), generator=g))
        k = int(torch.randint(4, (1,), generator=g))
        k = k + 1 if k >= i else k
        phi = 2 * torch.rand(1, generator=g, dtype=torch.float64).item() - 1
        expected = keeps[i].tolist()
        expected[j] = min(1.0, max(0.1, expected[j] + phi * (expected[j] - keeps[k, j].item())))
        assert out.tolist() == pytest.approx(expected, abs=1e-15) and k != i
        seen_groups.add(j)
        seen_others.add((i, k))
    assert torch.equal(keeps, before) and seen_groups == {0, 1, 2, 3}
    assert {k for i, k in seen_others if i == 0} == {1, 2, 3, 4}         # every other source, never itself
    scores = torch.tensor([0.1, 0.5, 0.2, 0.9])
    assert torch.equal(onlookers(scores, 7, gen(3), 0.5), roulette_draws(standardised(scores), 7, gen(3), 0.5))


def reference_colony(space, score, gen_, sources, cycles, limit, keep_low=0.2):
    """The colony written out plainly, one bee after another: the widths it scores, in order."""
    seen = []
    keeps = [space.sample(gen_, keep_low) for _ in range(sources)]
    scores = [score(space.widths(k)) for k in keeps]
    seen += [space.widths(k) for k in keeps]
    trials = [0] * sources
    for _ in range(cycles):
        visits = list(range(sources))
        for step in range(2 * sources):
            if step == sources:                                         # the onlookers, drawn now
                visits += onlookers(torch.tensor(scores, dtype=torch.float64), sources, gen_).tolist()
            i = visits[step]
            moved = space.repair(neighbour(torch.stack(keeps), i, gen_, space.floor))
            if moved is not None:
                seen.append(space.widths(moved))
            if moved is not None and score(space.widths(moved)) > scores[i]:
                keeps[i], scores[i], trials[i] = moved, score(space.widths(moved)), 0
            else:
                trials[i] += 1
        tired = trials.index(max(trials))
        if trials[tired] >= limit:
            keeps[tired] = space.sample(gen_, keep_low)
            scores[tired], trials[tired] = score(space.widths(keeps[tired])), 0
            seen.append(space.widths(keeps[tired]))
    return seen


def test_the_bee_colony_keeps_a_source_only_for_a_better_one_and_scouts_the_tired():
    """The colony scores what the plain reference scores, in the same order (greedy replacement,
    the onlookers' roulette, one scout per cycle); with cycles=0 it is random_search's first draws."""
    parent = KINDS["cnn"]()
    space = WidthSpace(parent, 0.5, 0.05)

    def score(widths):                                                  # prefers wide first groups
        return widths[0] / space.units[0] - 0.1 * widths[-1] / space.units[-1]

    def colony(**settings):
        return BeeColony(macs=0.5, tolerance=0.05, keep_low=0.2, **settings).search(space, score, problem(parent))
    first = colony(sources=4, cycles=0)
    drawn = RandomSearch(macs=0.5, tolerance=0.05, keep_low=0.2, candidates=4).search(space, score, problem(parent))
    assert [c.widths for c in first] == [c.widths for c in drawn]
    for sources, cycles, limit in ((4, 3, 0), (5, 3, 2), (3, 4, 9)):
        records = colony(sources=sources, cycles=cycles, limit=limit)
        assert [c.widths for c in records] == reference_colony(space, score, problem(parent).generator,
                                                               sources, cycles, limit)
        assert [c.generation for c in records[:sources]] == [0] * sources
        assert all(abs(c.macs - 0.5) <= 0.05 for c in records)
    assert len({c.widths for c in records}) > 3                        # it moved
    with pytest.raises(ConfigError, match="invalid config: method.sources=1"):
        BeeColony.from_settings({**{f.name: f.default for f in dataclasses.fields(BeeColony)}, "sources": 1}, {})


# -- the scores ---------------------------------------------------------------------------------------
def task(n: int, seed: int) -> Split:
    """Random images whose class is the argmax of one fixed linear map of them (learnable)."""
    x = torch.randn(n, FEATURES, generator=gen(seed))
    return Split(x, (x @ torch.randn(FEATURES, 5, generator=gen(99))).argmax(1))


def trained(kind: str):
    t = task(800, 1)
    return fine_tune(KINDS[kind](), t.x, t.y, 15, 1e-2, 50, gen(0))


@pytest.mark.parametrize("kind", ["cnn", "resnet"])
def test_adaptive_bn_moves_each_kept_channel_to_the_parents_statistics_and_changes_the_score(kind):
    parent = trained(kind)
    batches = [task(64, 10 + i).x for i in range(4)]
    stats = conv_statistics(parent, batches)
    same = recalibrate(parent, [torch.arange(u) for u in parent.units], stats, batches)
    assert all(torch.allclose(a, c, atol=5e-2, rtol=5e-2) for (a, _), (c, _) in zip(same.layers, parent.layers))
    space = WidthSpace(parent)
    widths = tuple(max(1, u // 2) for u in parent.units)                  # every group pruned
    net, kept = space.network(widths), space.kept_units(widths)
    groups = net.layer_groups()

    def gap(n):           # over the convolutions: the largest gap to the parent's mean of the kept channels
        return max(float((m - stats[k][0][kept[groups[k][0]]]).abs().max())
                   for k, (m, _) in enumerate(conv_statistics(n, batches)))

    tuned = recalibrate(net, kept, stats, batches)
    assert gap(tuned) < 0.01 * gap(net)
    sd = ScoreData(task(300, 5), batches, 64)
    plain = score_class("accuracy")(parent, sd, resolve())(net, kept)
    adapted = score_class("adaptive_bn")(parent, sd, resolve())(net, kept)
    assert adapted != plain and adapted == accuracy(tuned, sd.held_out.x, sd.held_out.y)


def test_the_scores_read_held_out_training_images_never_the_test_split():
    ids = torch.arange(2000, dtype=torch.float32)
    train = Split(ids.view(-1, 1).repeat(1, FEATURES), torch.zeros(2000, dtype=torch.long))
    test_ids = set(range(-500, 0))                                       # the test split: other images
    run = draw_run_data(train, 1000, 600, gen(0))
    sd, pick = score_data(run, 400, 3, 100, "cpu")
    held, calib, chosen = set(sd.held_out.x[:, 0].tolist()), set(torch.cat(sd.calibration)[:, 0].tolist()), \
        set(pick.x[:, 0].tolist())
    subset, val = set(run.train.x[:, 0].tolist()), set(run.val.x[:, 0].tolist())
    assert len(held) == 400 and held <= val and not held & subset and not held & chosen and not held & test_ids
    assert len(calib) == 300 and calib <= subset and len(chosen) == 200 and chosen <= val
    with pytest.raises(ValueError, match="needs more than score_size=600"):
        score_data(run, 600, 3, 100, "cpu")


def test_every_score_is_a_module_and_scores_a_candidate():
    assert available() == ["accuracy", "adaptive_bn", "cka", "similarity"]
    parent = KINDS["cnn"]()
    sd = ScoreData(labelled(parent, 200, 1), [torch.randn(50, FEATURES, generator=gen(1))], 50)
    space = WidthSpace(parent, 0.5, 0.05)
    full, small = tuple(parent.units), space.widths(space.sample(gen(0)))
    for name in ("similarity", "cka"):
        s = score_class(name)(parent, sd, resolve())
        assert s(parent, space.kept_units(full)) == pytest.approx(0.0, abs=1e-4)     # the parent against itself
        assert s(space.network(small), space.kept_units(small)) < -1e-4
    with pytest.raises(ValueError, match="unknown score 'nope'"):
        score_class("nope")


# -- the methods ---------------------------------------------------------------------------------------
def problem(parent, seed: int = 0) -> Problem:
    x = torch.randn(1200, FEATURES, generator=gen(seed + 50))
    g = gen(seed)
    return Problem(parent=parent, recipe=None, data=draw_run_data(Split(x, logits(parent, x).argmax(1)), 600, 400, g),
                   batch_size=50, generator=g, seed=seed)


SMALL = dict(tolerance=0.05, bn_batches=2, score_size=200, top_k=2, epochs=1)


@pytest.mark.parametrize("kind", ["cnn", "resnet"])
@pytest.mark.parametrize("method", [RandomSearch(candidates=6, score="adaptive_bn", **SMALL),
                                    EvolveWidths(population=6, generations=2, elite=2, score="similarity", **SMALL),
                                    BeeColony(sources=3, cycles=2, limit=1, score="cka", **SMALL)],
                         ids=["random_search", "evolve_widths", "bee_colony"])
def test_every_returned_network_meets_its_macs_budget(kind, method):
    parent = KINDS[kind]()
    for macs in (0.35, 0.6):
        method.macs = macs
        out = method.run(problem(parent))
        ratio = out.network.size("macs") / parent.size("macs")
        assert abs(ratio - macs) <= method.tolerance and ratio == pytest.approx(out.metrics["winner_macs_ratio"])
        rows = list(csv.DictReader(io.StringIO(out.artifacts["candidates.csv"])))
        counts = {"random_search": (6, 6), "evolve_widths": (18, 18), "bee_colony": (3, 3 + 2 * (2 * 3 + 1))}
        assert counts[method.name][0] <= len(rows) <= counts[method.name][1]
        assert all(abs(float(r["macs_ratio"]) - macs) <= method.tolerance for r in rows)
        assert sum(r["finetuned_pick_accuracy"] != "" for r in rows) >= 2
        assert tuple(out.network.units) == tuple(int(out.metrics[f"width_{g}"]) for g in range(len(parent.units)))
        assert out.metrics["search_seconds"] > 0 and out.metrics["finetune_seconds"] > 0


DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvolveWidths)}


@pytest.mark.parametrize("settings,key", [({"macs": 0.0}, "method.macs"), ({"score": "nope"}, "method.score"),
                                          ({"elite": 1}, "method.elite"), ({"score_size": 5000}, "method.score_size"),
                                          ({"bn_batches": 101}, "method.bn_batches"), ({"tolerance": 1.5}, "method.tolerance")])
def test_bad_settings_are_one_line_naming_the_key(settings, key):
    context = {"data": {"val_size": 5000, "train_size": 10000, "batch_size": 100}}
    with pytest.raises(ConfigError, match=f"invalid config: {key}=") as err:
        EvolveWidths.from_settings({**DEFAULTS, **settings}, context)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_tracked_run_logs_the_candidates_table_and_the_widths(make_cfg, store):
    cfg = make_cfg("method=random_search", "method.candidates=4", "method.score_size=200", "data.val_size=400",
                   "method.bn_batches=2", "method.macs=0.6", "method.tolerance=0.05", "seed=1")
    result = run_experiment(cfg)
    client = MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])[0]
    path = client.download_artifacts(run.info.run_id, "candidates.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 4 and run.data.tags["method"] == "random_search"
    m = run.data.metrics
    assert abs(m["best_macs_ratio"] - 0.6) <= 0.05 and m["best_hidden_units"] == m["width_0"] + m["width_1"]
    assert {"search_seconds", "finetune_seconds", "searched_test_accuracy"} <= set(m)
    assert result.metrics["best_test_accuracy"] == m["best_test_accuracy"]
