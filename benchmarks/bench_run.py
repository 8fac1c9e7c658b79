"""Time one paper-default EComp run and split it into phases.

    python benchmarks/bench_run.py              # full run (100 generations + final pick), 3 repeats
    python benchmarks/bench_run.py --short      # 20 generations, for quick iterations
    python benchmarks/bench_run.py --device cuda  # only the GPU (default: the CPU, then the GPU if there is one)
    python benchmarks/bench_run.py --no-baseline parent=cnn   # LeNet-5: the phases (its forward rate: bench_conv.py)

Reports medians over repeats: seconds per run; per-evaluation seconds of the
forward passes, similarity, operators and tracking; the ratio of everything
else to the forward passes (the median of each run's own ratio, and the ratio
of the medians); peak memory; and, as the baseline measured
in the same process, the straightforward reference evaluator on the same
population (a few generations), as a per-generation speed-up.

The floors: the population's forward passes and the similarity's Gram matrices are counted
exactly as the run makes them (every evaluation's MACs from the individuals' own sizes, every
point set's ``n x n x width`` product), and set against one large convolution's rate and one
2048^3 GEMM's, both measured in the same process: what the run's two big products would take if
they ran at the machine's best rate for their kind, beside what they took. On the CPU also
against the FMA ceiling (``rates.fma_gflops``): no product runs faster than that, so the
forward passes plus the Grams' upper triangles at that rate is a bound on the run's time (at
the larger of it and the reference convolution's, which reaches it within a few per cent).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere  # noqa: E402

from ecomp.app.cli import CONF_DIR, check_overrides  # noqa: E402
from ecomp.app.config import register_configs  # noqa: E402
from ecomp.app.pipeline import run_experiment  # noqa: E402
from ecomp.timing import PhaseTimer  # noqa: E402
from rates import conv_gflops, fma_gflops, gemm_gflops  # noqa: E402  (this folder is the script's: sys.path[0])
from bench_conv import fused_flops  # noqa: E402


class ProductCounter:
    """Counts, while installed, the FLOPs of the population's forward passes (each evaluation's
    individuals' MACs x its images x 2) and of the similarity's Gram matrices (each point set's
    ``2 n^2 width``, the full product as a GEMM makes it), by wrapping the two forward passes the
    evaluator calls and the t-SNE measure's ``score``. Instrumentation of this script only: the run's numbers are unchanged."""

    def __init__(self):
        from ecomp.core import fitness
        from ecomp.kernels import net_forward
        from ecomp.measures import tsne

        self.forward = self.grams = 0.0
        self._undo = []
        counter = self

        def counted(inner):
            def forward(pop, x, *args, **kwargs):
                counter.forward += 2.0 * x.shape[0] * float(pop.sizes("macs").sum())
                return inner(pop, x, *args, **kwargs)
            return forward

        def score(measure, hidden, stacked, states, n):
            counter.grams += sum(2.0 * n * a.shape[0] * a.shape[1] for layer in hidden for a in layer)
            return inner_score(measure, hidden, stacked, states, n)

        inner_score = tsne.TSNE.score
        for owner, name, fn in ((fitness, "forward", counted(fitness.forward)),
                                (net_forward, "forward", counted(net_forward.forward)), (tsne.TSNE, "score", score)):
            self._undo.append((owner, name, getattr(owner, name)))
            setattr(owner, name, fn)

    def remove(self) -> None:
        for owner, name, fn in self._undo:
            setattr(owner, name, fn)


def reference_seconds_per_generation(cfg, generations: int = 2) -> float:
    """The straightforward path (one module per network, float64 step-for-step probabilities)."""
    from ecomp.core.evolution import EComp, MutationSpec
    from ecomp.core.fitness import ReferenceEvaluator, Weights
    from ecomp.core.initialiser import l1_population
    from ecomp.app.parents import prepare_parent
    from ecomp.app.spec import build
    from ecomp.kernels.backend import resolve
    from ecomp.measures.tsne import TSNE
    from ecomp.nets import data as data_mod

    spec = build(cfg)
    train, parent = prepare_parent(spec.parent, spec.data)
    g = torch.Generator().manual_seed(0)
    sub = data_mod.random_subset(train, cfg.data.batch_size * generations, g)
    bs = cfg.data.batch_size
    batches = [(sub.x[s:s + bs], sub.y[s:s + bs]) for s in range(0, sub.x.shape[0], bs)]
    ev = ReferenceEvaluator(parent, batches, TSNE(cfg.similarity.perplexity, backend=resolve("cpu", "torch")))
    for k in range(len(batches)):
        ev.prepare(k)
    ecomp = EComp(ev, Weights(1, 2, 1), MutationSpec(), g)
    pop = l1_population(parent, cfg.population.size, cfg.population.keep_ratio.high, cfg.population.keep_ratio.low)
    it = ecomp.run(pop, epochs=1)
    next(it)
    t = time.perf_counter()
    n = sum(1 for _ in it)
    return (time.perf_counter() - t) / n


def print_floors(device: str, forward: float, grams: float, med: dict, evaluations: int) -> None:
    """The run's forward passes and Grams against the machine's best rates (see the module's doc)."""
    conv, gemm = conv_gflops(device), gemm_gflops(device)
    print(f"machine: one large convolution {conv:.1f} GFLOP/s, one 2048^3 GEMM {gemm:.1f} GFLOP/s (this process)")
    print(f"forward passes: {forward / 1e12:.2f} TFLOP in {med['forward']:.2f} s ({forward / med['forward'] / 1e9:.1f} "
          f"GFLOP/s, {forward / med['forward'] / 1e9 / conv:.2f} of the convolution's rate); at the convolution's "
          f"rate {forward / conv / 1e9:.2f} s, at the GEMM's {forward / gemm / 1e9:.2f} s")
    if grams:
        print(f"similarity: Grams {grams / 1e12:.2f} TFLOP (full products) = {grams / gemm / 1e9:.2f} s at the GEMM's "
              f"rate, half that as symmetric products; the phase took {med['similarity']:.2f} s "
              f"({1e3 * med['similarity'] / evaluations:.1f} ms per evaluation)")
    fma = fma_gflops(device)
    if fma:
        top = max(fma, conv)          # the two agree within the VM's noise; the bound takes the larger
        bound = (forward + grams / 2) / top / 1e9
        print(f"FMA ceiling {fma:.1f} GFLOP/s (this process): at the larger of it and the convolution's rate, "
              f"the forward passes and the Grams' triangles need at least {bound:.2f} s here (the forward "
              f"passes {forward / top / 1e9:.2f} s, {forward / top / 1e9 / med['forward']:.2f} of the time they took)")


PRODUCTS = ("aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm", "aten::mkldnn_convolution",
            "aten::_slow_conv2d_forward", "aten::thnn_conv2d")


def print_products(cfg, total: float) -> None:
    """One more run under ``torch.profiler``: the seconds its GEMMs and convolutions took as
    calls of their own (each product at the rate the libraries reach at its shape), beside the
    run's length without the profiler. What is left of the run is everything else the
    algorithm does (pooling, ReLUs, copies, the similarity's search, the operators, set-up)."""
    from torch.profiler import ProfilerActivity, profile

    from ecomp.kernels import blocked, native

    # the C library's products, which the profiler does not see: seconds and FLOPs per kernel
    kernels = {name: {"seconds": 0.0, "flop": 0.0}
               for name in ("fused convolution stages", "linear stages", "wide Grams")}

    def flop_conv(x, w, b, padding, stride, pool, out, *args, **kwargs):
        return fused_flops(w, pool, out)

    def flop_linear(h, w, *args, **kwargs):
        return 2.0 * h.shape[0] * h.shape[1] * h.shape[2] * w.shape[1]

    def flop_grams(acts, n):                            # the upper triangles' products (half the full Grams')
        return sum(float(n) * a.shape[0] * a.shape[1] for a in acts)

    def timed(name, fn, flop):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            done = fn(*args, **kwargs)
            kernels[name]["seconds"] += time.perf_counter() - t0
            kernels[name]["flop"] += flop(*args, **kwargs)
            return done
        return run

    plain = {"conv_pool": native.conv_pool, "linear_blocked": blocked.linear_blocked}
    native.conv_pool = timed("fused convolution stages", plain["conv_pool"], flop_conv)
    blocked.linear_blocked = timed("linear stages", plain["linear_blocked"], flop_linear)
    blocked.wide_grams, wide = timed("wide Grams", blocked.wide_grams, flop_grams), blocked.wide_grams
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            run_experiment(cfg)
            profiled = time.perf_counter() - t
    finally:
        native.conv_pool, blocked.linear_blocked, blocked.wide_grams = plain["conv_pool"], plain["linear_blocked"], wide
    for name, k in kernels.items():
        if k["seconds"]:
            print(f"{name} (the C library's{' or the GEMM library' if name == 'wide Grams' else ''}, not seen by the "
                  f"profiler): {k['seconds']:.2f} s, {k['flop'] / 1e12:.2f} TFLOP, "
                  f"{k['flop'] / k['seconds'] / 1e9:.1f} GFLOP/s")
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages() if e.key in PRODUCTS}
    top = sorted(((e.self_cpu_time_total / 1e6, e.key) for e in prof.key_averages()), reverse=True)[:8]
    print(f"products (one more run, {profiled:.2f} s under the profiler, {total:.2f} s without): "
          f"{sum(ops.values()):.2f} s in GEMMs and convolutions ("
          + ", ".join(f"{k.removeprefix('aten::')} {v:.2f}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))
          + "); the largest ops by own seconds: " + ", ".join(f"{k.removeprefix('aten::')} {v:.2f}" for v, k in top))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="20 generations instead of 100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda when available)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the reference-path baseline")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up run (a long ResNet run)")
    ap.add_argument("--products", action="store_true",
                    help="one more run under torch.profiler: the products' own seconds (CPU)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        bench_device(args, device)


def bench_device(args, device: str) -> None:
    register_configs()
    tmpdir = tempfile.TemporaryDirectory(prefix="ecomp-bench-")   # store and artifacts; removed when done
    tmp = tmpdir.name
    ov = ["progress=false", f"device={device}", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
          f"tracking.artifact_location=file://{tmp}/artifacts", "tracking.skip_finished=false"]
    if args.short:
        ov.append("data.train_size=2000")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=check_overrides(ov + args.overrides))

    from ecomp.kernels import c_library
    from ecomp.kernels.backend import resolve as resolve_backend
    kernels = resolve_backend(device, cfg.similarity.kernels).kernels
    print(f"\n== {device}: torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else "")
          + f"; similarity.kernels={cfg.similarity.kernels} -> {kernels}"
          + (f" ({c_library.isa()})" if kernels == "native" else ""))
    if not args.no_warmup:
        run_experiment(cfg)  # warm-up: parent cache, data, MLflow store, allocator
    runs, phases, products = [], [], []
    for r in range(args.repeats):
        timer = PhaseTimer(resolve_backend(device).synchronize)
        counter = ProductCounter()
        t = time.perf_counter()
        try:
            run_experiment(cfg, timer=timer)
        finally:
            counter.remove()
        runs.append(time.perf_counter() - t)
        phases.append(dict(timer.seconds))
        products.append((counter.forward, counter.grams))
    n_batches = cfg.data.train_size // cfg.data.batch_size
    evaluations = cfg.evolution.epochs * n_batches + 1 + n_batches     # evolution + final pick
    med = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in ("forward", "similarity", "operators", "tracking")}
    total = statistics.median(runs)
    rest = total - med["forward"]
    print(f"\nrun ({'short' if args.short else 'paper default'}: pop {cfg.population.size}, "
          f"{evaluations - n_batches} generations + {n_batches}-batch final pick), median of {args.repeats}: "
          f"{total:.2f} s   (all runs: {', '.join(f'{x:.2f}' for x in runs)})")
    print("per evaluation (ms):  " + "  ".join(f"{k} {1e3 * v / evaluations:.1f}" for k, v in med.items()))
    # Each run's own ratio (its rest over its forward time) is the paired measure: on these VMs the
    # speed drifts between runs, and a ratio of medians can pair one run's total with another's forward.
    ratios = [(t - p.get("forward", 0.0)) / p.get("forward", 1.0) for t, p in zip(runs, phases)]
    print(f"rest / forward: {statistics.median(ratios):.2f}, median of the runs' own ratios "
          f"({', '.join(f'{r:.2f}' for r in ratios)}); of the medians: {rest / med['forward']:.2f}")
    print(f"  rest = whole run - forward = {rest:.2f} s: similarity {med['similarity']:.2f} s, operators "
          f"{med['operators']:.2f} s, tracking {med['tracking']:.2f} s, the rest outside these phases")
    print_floors(device, statistics.median(f for f, _ in products), statistics.median(g for _, g in products),
                 med, evaluations)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"peak memory (max RSS of this process): {peak:.2f} GiB")
    if args.products and device == "cpu":
        print_products(cfg, total)
    if device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 1024 ** 3:.2f} GiB")
    if not args.no_baseline:
        ref = reference_seconds_per_generation(cfg)
        fast = total / evaluations
        print(f"baseline: reference path {ref:.2f} s per generation vs {fast:.3f} s here: {ref / fast:.0f}x "
              f"(REFERENCE.md: the authors' code, 536 s per run -> {536 / total:.0f}x)")


if __name__ == "__main__":
    main()
