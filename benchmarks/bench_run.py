"""Time one paper-default EComp run and split it into phases.

    python benchmarks/bench_run.py              # full run (100 generations + final pick), 3 repeats
    python benchmarks/bench_run.py --short      # 20 generations, for quick iterations
    python benchmarks/bench_run.py --device cuda  # only the GPU (default: the CPU, then the GPU if there is one)
    python benchmarks/bench_run.py --no-baseline parent=cnn   # LeNet-5: the phases (its forward rate: bench_conv.py)

Reports medians over repeats: seconds per run; per-evaluation seconds of the
forward passes, similarity, operators and tracking; the ratio of everything
else to the forward passes (the median of each run's own ratio, and the ratio
of the medians); the forward passes' GFLOP/s next to one large
GEMM measured in the same process; peak memory; and, as the baseline measured
in the same process, the straightforward reference evaluator on the same
population (a few generations), as a per-generation speed-up.
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


def gemm_gflops(device: str, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    ts = []
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


def forward_flops(history_widths: float, pop: int, batch: int, n_hidden: int, inp: int, classes: int) -> float:
    """FLOPs of one population forward pass at mean hidden width ``history_widths``."""
    h = history_widths
    return 2.0 * batch * pop * (inp * h + (n_hidden - 1) * h * h + h * classes)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="20 generations instead of 100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda when available)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the reference-path baseline")
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
    run_experiment(cfg)  # warm-up: parent cache, data, MLflow store, allocator
    runs, phases = [], []
    widths = []
    for r in range(args.repeats):
        timer = PhaseTimer(resolve_backend(device).synchronize)
        t = time.perf_counter()
        res = run_experiment(cfg, timer=timer)
        runs.append(time.perf_counter() - t)
        phases.append(dict(timer.seconds))
        if cfg.parent.kind == "mlp":     # the mean hidden width, for the MLP's FLOP count
            widths.append(statistics.mean(h["compression_mean"] for h in res.history) * cfg.parent.hidden[0])
    n_batches = cfg.data.train_size // cfg.data.batch_size
    evaluations = cfg.evolution.epochs * n_batches + 1 + n_batches     # evolution + final pick
    med = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in ("forward", "similarity", "operators", "tracking")}
    total = statistics.median(runs)
    rest = total - med["forward"]
    flops = None
    if cfg.parent.kind == "mlp":         # a CNN's forward rate: benchmarks/bench_conv.py
        from ecomp.nets.datasets import info     # a null parent.input_dim / classes: the dataset's

        data = info(cfg.data.name)
        dims = len(cfg.parent.hidden), cfg.parent.input_dim or data.input_dim, cfg.parent.classes or data.classes
        flops = forward_flops(statistics.median(widths), cfg.population.size, cfg.data.batch_size, *dims) * evaluations
        # the forward phase also holds the parent's pass over the training subset (for its
        # probabilities) and the best network's over the test images: about 1 % more
        flops += forward_flops(cfg.parent.hidden[0], 1, cfg.data.train_size, *dims)
        flops += forward_flops(statistics.median(widths), 1, cfg.data.test_size, *dims)
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
    if flops is not None:
        print(f"forward: {flops / med['forward'] / 1e9:.1f} GFLOP/s; one 2048^3 GEMM here: {gemm_gflops(device):.1f} GFLOP/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"peak memory (max RSS of this process): {peak:.2f} GiB")
    if device.startswith("cuda"):
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 1024 ** 3:.2f} GiB")
    if not args.no_baseline:
        ref = reference_seconds_per_generation(cfg)
        fast = total / evaluations
        print(f"baseline: reference path {ref:.2f} s per generation vs {fast:.3f} s here: {ref / fast:.0f}x "
              f"(REFERENCE.md: the authors' code, 536 s per run -> {536 / total:.0f}x)")


if __name__ == "__main__":
    main()
