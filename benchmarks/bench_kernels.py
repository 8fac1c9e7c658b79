"""Time each optimised kernel against the plainer way of doing the same thing, in one process.

    python benchmarks/bench_kernels.py             # paper-default shapes, real parent and data
    python benchmarks/bench_kernels.py --reps 50

Every line is ``name: plain -> optimised (median ms over reps, the two timed
alternately), ratio``, measured on
the initial L1 population of the cached paper parent (``python -m ecomp.app.prepare``
makes it) and one batch of 100 FashionMNIST images. The optimised versions are the
ones the evaluator uses; the plain ones are what they replaced. Results of each pair
are checked to agree before anything is timed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere  # noqa: E402

from hydra import compose, initialize_config_dir  # noqa: E402

from ecomp.kernels import c_library, native  # noqa: E402
from ecomp.kernels.backend import resolve  # noqa: E402
from ecomp.measures.tsne import TSNE  # noqa: E402
from ecomp.kernels import tsne_torch as S  # noqa: E402
from ecomp.app.cli import CONF_DIR  # noqa: E402
from ecomp.app.config import register_configs  # noqa: E402
from ecomp.core.fitness import Evaluator  # noqa: E402
from ecomp.core.initialiser import l1_population  # noqa: E402
from ecomp.core.mutation import mutate_  # noqa: E402
from ecomp.app.parents import prepare_parent  # noqa: E402
from ecomp.app.spec import build  # noqa: E402
from ecomp.nets.population import Population  # noqa: E402
from ecomp.kernels.forward import first_layer, forward  # noqa: E402
from ecomp.core.recombination import recombine  # noqa: E402
from ecomp.core.selection import select_pairs  # noqa: E402
from ecomp.kernels.runtime import keep_freed_memory  # noqa: E402


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def paired_median_ms(plain, fast, reps: int) -> tuple[float, float]:
    """Medians of ``plain`` and ``fast`` timed alternately, so that the machine's drift
    (these VMs change speed from minute to minute) hits both alike."""
    plain(), fast()
    a, b = [], []
    for _ in range(reps):
        for fn, times in ((plain, a), (fast, b)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(a), 1e3 * statistics.median(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    keep_freed_memory()
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config")
    spec = build(cfg)
    train, parent = prepare_parent(spec.parent, spec.data)
    g = torch.Generator().manual_seed(0)
    x, y = train.x[:1000], train.y[:1000]
    batches = [(x[s:s + 100], y[s:s + 100]) for s in range(0, 1000, 100)]
    pop = l1_population(parent, cfg.population.size, cfg.population.keep_ratio.high, cfg.population.keep_ratio.low)
    perplexity = float(cfg.similarity.perplexity)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; population {pop.size}, "
          f"{pop.first_w.shape[0]} first-layer rows; median of {args.reps} reps\n")

    def report(name, plain, fast, check):
        check()
        a, b = paired_median_ms(plain, fast, args.reps)
        print(f"{name:66s} {a:8.2f} -> {b:7.2f} ms   {a / b:5.2f}x")

    xb = batches[0][0]

    def same_first_layer():
        one = torch.addmm(pop.first_b, xb, pop.first_w.T)
        assert torch.allclose(one.T, first_layer(pop, xb), rtol=1e-4, atol=1e-4)
    report("first layer: one (100 x 784)(784 x 14k) GEMM -> 512-row blocks",
           lambda: torch.addmm(pop.first_b, xb, pop.first_w.T), lambda: first_layer(pop, xb), same_first_layer)

    def fwd_each():
        for k in range(10):
            forward(pop, batches[k][0])
    def same_forward():
        assert torch.allclose(forward(pop, x)[0][:, 300:400], forward(pop, batches[3][0])[0], rtol=1e-4, atol=1e-4)
    report("forward of 10 batches: one at a time -> 1,000 images at once", fwd_each, lambda: forward(pop, x),
           same_forward)

    perm = torch.randperm(pop.size, generator=g).tolist()          # parents in a shuffled order
    rows = torch.cat([torch.arange(pop.offsets[i], pop.offsets[i + 1]) for i in perm])
    buf = torch.empty_like(pop.first_w)

    def slabs():
        o = 0
        for i in perm:
            a, b = pop.offsets[i], pop.offsets[i + 1]
            buf[o:o + b - a].copy_(pop.first_w[a:b])
            o += b - a
    def same_gather():
        slabs()
        assert torch.equal(buf, pop.first_w[rows])
    report("recombination: copy parents' first layers slab by slab -> one index_select", slabs,
           lambda: torch.index_select(pop.first_w, 0, rows, out=buf), same_gather)

    _, hidden, _ = forward(pop, xb)
    acts = [a for layer in hidden for a in layer]

    def distances_plain():
        full = S.squared_distances(acts)
        d = S.off_diagonal(full).reshape(-1, full.shape[1] - 1)
        return d.sub_(d.min(1, keepdim=True).values)

    def same_distances():
        assert torch.allclose(distances_plain(), S.shifted_distances(acts), rtol=1e-3, atol=1e-2)
    report("distances: full matrix, clamp, off-diagonal, shift -> shifted", distances_plain,
           lambda: S.shifted_distances(acts), same_distances)

    ev = Evaluator(parent, batches, TSNE(perplexity))
    d = S.shifted_distances(acts)
    guess = ev._parent_state(0)[1].view(len(hidden), 1, -1).expand(-1, pop.size, -1).reshape(-1)

    def same_calibration():
        a, b = S.calibrate(d, perplexity)[0], S.calibrate(d, perplexity, beta_mean=guess)[0]
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-7)
    report(f"perplexity search, {d.shape[0]} rows: second-order start -> parent's beta",
           lambda: S.calibrate(d, perplexity), lambda: S.calibrate(d, perplexity, beta_mean=guess), same_calibration)

    uni = l1_population(parent, cfg.population.size, 0.8, 0.8)          # one architecture, as late in a run
    _, _, stacked = forward(uni, xb)
    _, uni_hidden, _ = forward(uni, xb, batched=False)
    uni_acts = [a for layer in uni_hidden for a in layer]

    def same_uniform():
        assert stacked is not None
        assert torch.allclose(forward(uni, xb)[0], forward(uni, xb, batched=False)[0], rtol=1e-4, atol=1e-4)
        assert torch.allclose(S.shifted_distances_stacked(stacked, 100), S.shifted_distances(uni_acts),
                              rtol=1e-3, atol=1e-2)
    report("one architecture: forward, a GEMM per network -> batched", lambda: forward(uni, xb, batched=False),
           lambda: forward(uni, xb), same_uniform)
    report("one architecture: distances, a Gram per network -> batched", lambda: S.shifted_distances(uni_acts),
           lambda: S.shifted_distances_stacked(stacked, 100), lambda: None)

    # The native kernels (ecomp.kernels.native) against the PyTorch path they replace by default.
    if c_library.available():
        n_layers = len(hidden)
        ev_t, ev_n = (Evaluator(parent, batches, TSNE(perplexity, backend=resolve("cpu", k))) for k in ("torch", "native"))
        (p_t, bm_t), (p_n, bm_n) = ev_t._parent_state(0), ev_n._parent_state(0)
        index = torch.arange(n_layers).repeat_interleave(pop.size)          # set (l, c) vs parent layer l

        def sim_torch(sets, dist):
            guess_t = bm_t.view(n_layers, 1, -1).expand(-1, pop.size, -1).reshape(-1)
            cond, _ = S.calibrate(dist(), perplexity, beta_mean=guess_t)
            return S.kl_from_conditionals(p_t, cond.view(-1, 100, 99)).flatten()

        def sim_native(sets):
            return native.similarity_acts(sets, 100, p_n, index, perplexity, guess=bm_n.view(n_layers, -1))

        def agree(a, b):
            a, b = a.double(), b.double()
            assert ((a - b).abs() <= 1e-3 * a.abs() + 1e-6).all(), float((a - b).abs().max())

        report("Gram matrices, 200 sets: a bmm per network -> native (6x16 blocks)",
               lambda: S.grams(acts), lambda: native.grams_acts(acts, 100),
               lambda: agree(S.grams(acts).flatten(), native.grams_acts(acts, 100).flatten()))
        report("similarity of a generation (Grams, search, KL): PyTorch -> native fused",
               lambda: sim_torch(acts, lambda: S.shifted_distances(acts)), lambda: sim_native(acts),
               lambda: agree(sim_torch(acts, lambda: S.shifted_distances(acts)), sim_native(acts)))
        _, uni_hidden_b, uni_stacked = forward(uni, xb)
        uni_views = [a for layer in uni_hidden_b for a in layer]
        report("one architecture, similarity: batched PyTorch -> native fused",
               lambda: sim_torch(uni_views, lambda: S.shifted_distances_stacked(uni_stacked, 100)),
               lambda: sim_native(uni_views),
               lambda: agree(sim_torch(uni_views, lambda: S.shifted_distances_stacked(uni_stacked, 100)),
                             sim_native(uni_views)))
        pairs = select_pairs(torch.randn(pop.size, generator=g), g)
        # as EComp.run: room for the widest possible children (a child takes its bulk parent's rows)
        out = pop.first_w.new_empty(pop.size * max(w[0] for w in pop.widths), pop.first_w.shape[1])

        def same_children():
            a = recombine(pop, pairs, torch.Generator().manual_seed(1), use_native=False)
            b = recombine(pop, pairs, torch.Generator().manual_seed(1), use_native=True)
            assert torch.equal(a.first_w, b.first_w) and torch.equal(a.first_b, b.first_b)
            assert all(torch.equal(x, y) for la, lb in zip(a.rest, b.rest) for pa, pb in zip(la, lb)
                       for x, y in zip(pa, pb))
        report("recombination of a generation: slice copies -> native one pass",
               lambda: recombine(pop, pairs, g, out=out, use_native=False),
               lambda: recombine(pop, pairs, g, out=out, use_native=True), same_children)

        # One architecture, as from about generation 35 of a run: each side evolves a chain of
        # its own, into two alternating buffers as before, or in place (over the parents' storage).
        def fresh() -> Population:                   # uni's networks, made to differ
            p = Population.from_individuals([[(w.clone(), b.clone()) for w, b in uni.individual(i)]
                                             for i in range(uni.size)])
            mutate_(p, 1.0, 0.5, 1.5, torch.Generator().manual_seed(0))
            return p
        chain = {"copy": fresh(), "in place": fresh(), "k": 0}
        buffers = [torch.empty_like(uni.first_w) for _ in range(2)]

        def copy_step():
            chain["k"] += 1
            chain["copy"] = recombine(chain["copy"], pairs, g, out=buffers[chain["k"] % 2])

        def in_place_step():
            chain["in place"] = recombine(chain["in place"], pairs, g, in_place=True)

        def same_generations():
            a, b = fresh(), fresh()
            for k in range(3):
                a = recombine(a, pairs, torch.Generator().manual_seed(k), out=buffers[k % 2])
                b = recombine(b, pairs, torch.Generator().manual_seed(k), in_place=True)
                assert b.slots is not None and all(torch.equal(x, y) for i in range(a.size)
                                                   for la, lb in zip(a.individual(i), b.individual(i))
                                                   for x, y in zip(la, lb))
        report("one architecture, recombination: native one pass -> in place", copy_step, in_place_step,
               same_generations)
    else:
        print("native kernels unavailable here: their lines are skipped")

    ref_rows = 200                                   # the float64 scikit-learn-exact search, two matrices

    def reference():
        for m in range(2):
            S.conditional_probabilities_reference(S.squared_distances([acts[m].double()])[0].numpy(), perplexity)
    ref_ms = median_ms(reference, max(3, args.reps // 10)) * d.shape[0] / ref_rows
    fast_ms = median_ms(lambda: S.calibrate(d, perplexity, beta_mean=guess), args.reps)
    name = "perplexity search: reference (float64, per matrix) -> fast"
    print(f"{name:66s} {ref_ms:8.2f} -> {fast_ms:7.2f} ms"
          f"   {ref_ms / fast_ms:5.2f}x   (reference timed on 2 matrices, scaled to {d.shape[0] // 100})")
    print(f"\nlog(perplexity) = {math.log(perplexity):.3f}; one generation has {d.shape[0]} rows to calibrate")


if __name__ == "__main__":
    main()
