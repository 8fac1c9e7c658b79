"""The convolutional population's forward pass: grouped (one batch per architecture) against
the per-network loop, on LeNet-5 populations, with achieved GFLOP/s and their share of one
large convolution's rate and one large GEMM's, measured in the same process.

    python benchmarks/bench_conv.py                     # batch 100, population 100, 5 repeats
    python benchmarks/bench_conv.py --batch 1000 --repeats 3
    python benchmarks/bench_conv.py --baseline 8594009  # and that commit's grouped pass beside it
    python benchmarks/bench_conv.py --blocks            # the first stage per block size instead

Beside them: the fused kernels' inner loops alone (``rates.shape_gflops``) and, per population,
the rate of each fused stage inside the grouped pass (:func:`stage_rates`): how far memory,
pooling, stores and padding to whole vectors keep the stages from what their registers reach.

"grouped" is the run's CPU pass: the C library's fused convolution stages and copies where the
library builds (``native=True``), for the baseline commit too where it has them. Beside each
pass, the same arithmetic as bare GEMMs at the population's own shapes (:func:`gemm_bound`), and
a default run's forward passes at each rate (:func:`run_floor`).

Three populations: the initial one (100 keep ratios: 100 architectures, as generation 0 is) and
two of a single architecture (keep 0.55 and keep 0.9: what evolution converges to; scenario 121
ends near 0.9 of the units). ``--baseline``: that commit's grouped pass on the same populations, built and
timed by its own code in a worktree of it (a child process, before this checkout's), its share
taken of the reference rate measured here. The process keeps
freed memory as a run does (:func:`ecomp.kernels.runtime.keep_freed_memory`). Medians of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from ecomp.core.initialiser import l1_population  # noqa: E402
from ecomp.kernels import c_library, conv_forward  # noqa: E402
from ecomp.nets import convnet  # noqa: E402
from ecomp.nets.net_population import NetPopulation  # noqa: E402
from ecomp.nets.convnet import plan_size  # noqa: E402
from ecomp.kernels.runtime import keep_freed_memory  # noqa: E402
from rates import CONV, conv_gflops, fma_gflops, gemm_gflops, shape_gflops  # noqa: E402  (this folder is the script's: sys.path[0])

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_bound(pop: NetPopulation, batch: int, repeats: int) -> float:
    """Seconds of the population's forward arithmetic alone, as GEMMs at its own shapes: the first
    convolution as one GEMM of the shared images' patches (``K = c x k x k``) by every individual's
    filters (rows in blocks of at most 1 M floats of output, into one reused buffer), every later
    convolution as a GEMM of ready-made patches (``M = batch x out_h x out_w``, ``K = in x k x k``,
    ``N = out``), batched over the individuals of one architecture, every linear layer likewise.
    No unfolding, ReLU, pooling, bias or copies: a lower bound on what the grouped pass can take at
    these shapes on this machine, whatever its kernels."""
    plan = pop.plan
    calls = []
    first, (_, h0, w0) = plan.stages[0], plan.maps()[0]
    k0 = plan.in_shape[0] * first.kernel ** 2
    n0 = sum(w[0] for w in pop.widths)
    rows = max(1, (1 << 20) // n0)
    a0, b0, c0 = torch.randn(rows, k0), torch.randn(k0, n0), torch.empty(rows, n0)
    total_rows = batch * h0 * w0
    calls.append(lambda: [torch.mm(a0[:min(rows, total_rows - r)], b0, out=c0[:min(rows, total_rows - r)])
                          for r in range(0, total_rows, rows)])
    for widths, members in pop.groups().items():
        arch = plan.with_units(widths)
        for l in range(1, len(arch.stages)):
            stage, (out, h, w) = arch.stages[l], arch.maps()[l]
            k = arch.inputs()[l] * (stage.kernel ** 2 if stage.kind == "conv" else 1)
            m = batch * h * w
            g = max(1, min(len(members), (1 << 22) // (m * k)))      # operands of at most 4 M floats
            a, b = torch.randn(g, m, k), torch.randn(g, k, out)
            c = torch.empty(g, m, out)
            full, rest = divmod(len(members), g)
            calls.append(lambda a=a, b=b, c=c, full=full, rest=rest: (
                [torch.bmm(a, b, out=c) for _ in range(full)], rest and torch.bmm(a[:rest], b[:rest], out=c[:rest])))
    return median_seconds(lambda: [f() for f in calls], repeats)


def fused_flops(w, pool: int, out, groups: int = 1, vector: int = 1, lanes: str = "filters") -> float:
    """FLOPs of one ``native.conv_pool`` call with filters ``w`` into ``out`` ``(g or blocks, n, H', W', .)``:
    every window position's dot products, with what fills the vectors' lanes (``lanes``: each
    group's filters or the images) rounded up to whole vectors of ``vector`` floats (1: the
    individuals' own filters on the images only)."""
    f, n = w.shape[0] // groups, out.shape[1]
    if lanes == "images":
        n = -(-n // vector) * vector
    else:
        f = -(-f // vector) * vector
    return 2.0 * n * out.shape[2] * out.shape[3] * pool * pool * w[0].numel() * groups * f


def stage_rates(pop: NetPopulation, x, repeats: int) -> dict[str, tuple[float, float, float]]:
    """The grouped pass's fused convolution stages, timed call by call over ``repeats`` passes
    (``native.conv_pool`` wrapped; the first stage sums in ``patches`` order, later ones in
    ``pixels`` order): ``{"first" | "later": (seconds per pass, GFLOP/s of the individuals' own
    filters, GFLOP/s counting the lanes left empty: zero filters padding each group to whole
    vectors, or the images' last vector's missing images)}``."""
    from ecomp.kernels import native
    vw = native.conv_block() or 1
    real = native.conv_pool
    acc: dict[str, list[float]] = {"first": [0.0, 0.0, 0.0], "later": [0.0, 0.0, 0.0]}

    def timed(x, w, b, padding, stride, pool, out, groups=1, order="patches", filters=None, lanes="auto"):
        t = time.perf_counter()
        done = real(x, w, b, padding, stride, pool, out, groups, order, filters, lanes)
        a = acc["first" if order == "patches" else "later"]
        a[0] += time.perf_counter() - t
        held = native.conv_lanes(out.shape[1], w.shape[0] // groups) if lanes == "auto" else lanes
        a[1] += fused_flops(w, pool, out, groups)
        a[2] += fused_flops(w, pool, out, groups, vw, held)
        return done

    conv_forward.forward_grouped(pop, x, native=True)
    conv_forward.native_kernels.conv_pool = timed
    try:
        for _ in range(repeats):
            conv_forward.forward_grouped(pop, x, native=True)
    finally:
        conv_forward.native_kernels.conv_pool = real
    return {k: (t / repeats, useful / t / 1e9, padded / t / 1e9) for k, (t, useful, padded) in acc.items() if t > 0}


def block_sizes(pops: dict, x, repeats: int) -> None:
    """The first stage (convolution, bias, ReLU, pooling) of each population at each
    ``BLOCK_ELEMENTS`` from 2^16 to 2^22 floats per thread: what chose the default."""
    x4 = x.view(x.shape[0], 1, 28, 28)
    default = conv_forward.BLOCK_ELEMENTS
    print(f"first stage, {torch.get_num_threads()} threads, medians of {repeats}")
    print("| floats per thread | " + " | ".join(pops) + " |")
    print("|---|" + "---|" * len(pops))
    try:
        for k in range(16, 23):
            conv_forward.BLOCK_ELEMENTS = 1 << k
            times = [median_seconds(lambda: [None for _ in conv_forward._first_stage(pop, list(range(pop.size)), x4)],
                                    repeats) for pop in pops.values()]
            mark = " (default)" if 1 << k == default else ""
            print(f"| 2^{k}{mark} | " + " | ".join(f"{t * 1e3:.1f} ms" for t in times) + " |", flush=True)
    finally:
        conv_forward.BLOCK_ELEMENTS = default


BASELINE_CHILD = """
import json, statistics, sys, time
import torch
from ecomp.core.initialiser import l1_population
from ecomp.kernels import conv_forward
from ecomp.nets import convnet
try:
    from ecomp.nets.net_population import NetPopulation as Pop
except ImportError:                                  # before 2026-12-05 evening
    from ecomp.nets.conv_population import ConvPopulation as Pop
try:
    from ecomp.kernels.runtime import keep_freed_memory
    keep_freed_memory()
except ImportError:
    pass
import inspect
try:                                                 # the run's CPU path: the C library's kernels where they build
    from ecomp.kernels import c_library
    kw = {"native": True} if ("native" in inspect.signature(conv_forward.forward_grouped).parameters
                              and c_library.available()) else {}
except ImportError:
    kw = {}
batch, size, repeats = (int(v) for v in sys.argv[1:4])
torch.manual_seed(0)
plan = convnet.lenet5((1, 28, 28), 10)
parent = convnet.from_module(convnet.build_module(plan), plan)
x = torch.rand(batch, 784)
def converged(keep):
    member = l1_population(parent, 1, keep, keep).members[0]
    return Pop(plan, [member] * size).take(list(range(size)))
out = {}
for name, pop in (("initial", l1_population(parent, size, 0.9, 0.207)), ("0.55", converged(0.55)), ("0.9", converged(0.9))):
    conv_forward.forward_grouped(pop, x, **kw)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); conv_forward.forward_grouped(pop, x, **kw); ts.append(time.perf_counter() - t)
    out[name] = statistics.median(ts)
print(json.dumps(out))
"""


def baseline_seconds(commit: str, batch: int, size: int, repeats: int) -> dict[str, float]:
    """That commit's grouped pass on the same three populations, built and timed by its own code
    (a git worktree of it, in a child process of this Python): ``{"initial", "0.55", "0.9"}`` ->
    median seconds. Its population classes and modules are its own, so any commit with the
    grouped pass serves."""
    with tempfile.TemporaryDirectory(prefix="ecomp-conv-") as d:
        tree = Path(d) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)
        try:
            res = subprocess.run([sys.executable, "-c", BASELINE_CHILD, str(batch), str(size), str(repeats)],
                                 cwd=tree, capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(tree)})
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", default=None, help="a commit whose grouped pass to time beside this one")
    ap.add_argument("--blocks", action="store_true", help="time the first stage per block size instead")
    args = ap.parse_args()
    keep_freed_memory()
    baseline = baseline_seconds(args.baseline, args.batch, args.size, args.repeats) if args.baseline else None
    torch.manual_seed(0)
    plan = convnet.lenet5((1, 28, 28), 10)
    parent = convnet.from_module(convnet.build_module(plan), plan)
    x = torch.rand(args.batch, 784)
    initial = l1_population(parent, args.size, 0.9, 0.207)
    def converged(keep: float) -> NetPopulation:
        member = l1_population(parent, 1, keep, keep).members[0]
        return NetPopulation(plan, [member] * args.size).take(list(range(args.size)))

    if args.blocks:
        block_sizes({"initial": initial, "keep 0.55": converged(0.55), "keep 0.9": converged(0.9)}, x, args.repeats)
        return
    conv, gemm, fma = conv_gflops("cpu", args.repeats), gemm_gflops("cpu", args.repeats), fma_gflops("cpu")
    native = c_library.available()           # the run's CPU path: the C library's fused stages and copies
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"population {args.size}, medians of {args.repeats}; grouped pass with the C kernels: {native}")
    print(f"one large convolution ({'x'.join(map(str, CONV[:4]))} -> {CONV[4]}, {CONV[5]}x{CONV[5]}, channels-last; "
          f"rates.py): {conv:.1f} GFLOP/s; one 2048^3 GEMM: {gemm:.1f} GFLOP/s"
          + (f"; the FMA ceiling: {fma:.1f} GFLOP/s (no product runs faster)" if fma else ""))
    shapes = shape_gflops() if fma and native else None
    if shapes:
        print("the fused kernels' inner loops alone, in the first-level cache (rates.shape_gflops): "
              + ", ".join(f"{k} {v:.1f} GFLOP/s ({v / fma:.2f} of the ceiling)" for k, v in shapes.items()))
    print("| population | loop | grouped | GFLOP/s | share of the convolution's rate | loop/grouped "
          "| GEMMs at its shapes | their GFLOP/s | grouped/GEMMs |" + (" baseline grouped | its share | baseline/now |" if baseline else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if baseline else ""))
    flop, seconds, bound, stages = {}, {}, {}, {}
    for key, name, pop in (("initial", "initial (100 architectures)", initial),
                           ("0.55", "one architecture, keep 0.55", converged(0.55)),
                           ("0.9", "one architecture, keep 0.9", converged(0.9))):
        flops = 2 * args.batch * float(pop.sizes("macs").sum())
        loop = median_seconds(lambda: conv_forward.forward_loop(pop, x), args.repeats)
        grouped = median_seconds(lambda: conv_forward.forward_grouped(pop, x, native=native), args.repeats)
        gemms = gemm_bound(pop, args.batch, args.repeats)
        flop[name], seconds[name], bound[name] = flops, grouped, gemms
        row = (f"| {name} | {loop * 1e3:.1f} ms | {grouped * 1e3:.1f} ms | {flops / grouped / 1e9:.1f} | "
               f"{flops / grouped / 1e9 / conv:.2f} | {loop / grouped:.2f}x | {gemms * 1e3:.1f} ms | "
               f"{flops / gemms / 1e9:.1f} | {grouped / gemms:.2f}x |")
        if baseline:
            before = baseline[key]
            row += f" {before * 1e3:.1f} ms | {flops / before / 1e9 / conv:.2f} | {before / grouped:.2f}x |"
        print(row, flush=True)
        if native and shapes:
            stages[name] = stage_rates(pop, x, args.repeats)
    print(f"parent MACs {plan_size(plan, 'macs')}")
    if stages:
        print("the fused stages inside the grouped pass: ms per pass, GFLOP/s of the individuals' filters "
              "(counting the vectors' empty lanes), share of the ceiling")
        for name, st in stages.items():
            print(f"  {name}: " + "; ".join(f"{k} {t * 1e3:.1f} ms, {u:.0f} ({p:.0f}) GFLOP/s, {u / fma:.2f}"
                                          for k, (t, u, p) in st.items()))
    if args.size == 100 and args.batch == 100:
        run_floor(flop, seconds, bound, conv)


def run_floor(flop: dict, seconds: dict, bound: dict, conv: float) -> None:
    """A default run's forward passes (as ``bench_resnet.py`` counts them): 101 evaluations of the
    evolution on populations no smaller than the initial one and the final pick's 100 batches at
    keep 0.9's size, at one large convolution's rate, as GEMMs at their own shapes, and as the
    grouped pass takes them here."""
    initial, final = "initial (100 architectures)", "one architecture, keep 0.9"
    total = (lambda d: 101 * d[initial] + 100 * d[final])
    print(f"a default run's forward passes: {total(flop) / 1e12:.2f} TFLOP: {total(flop) / conv / 1e9:.1f} s at one "
          f"large convolution's rate, {total(bound):.1f} s as GEMMs at their shapes, {total(seconds):.1f} s by the "
          f"grouped pass")


if __name__ == "__main__":
    main()
