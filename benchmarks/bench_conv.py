"""The convolutional population's forward pass: grouped (one batch per architecture) against
the per-network loop, on LeNet-5 populations, with achieved GFLOP/s and their share of one
large convolution's rate and one large GEMM's, measured in the same process.

    python benchmarks/bench_conv.py                     # batch 100, population 100, 5 repeats
    python benchmarks/bench_conv.py --batch 1000 --repeats 3
    python benchmarks/bench_conv.py --baseline 8594009  # and that commit's grouped pass beside it

Three populations: the initial one (100 keep ratios: 100 architectures, as generation 0 is) and
two of a single architecture (keep 0.55 and keep 0.9: what evolution converges to; scenario 121
ends near 0.9 of the units). ``--baseline``: that commit's ``ecomp/kernels/conv_forward.py``
(read with ``git show``) timed on the same populations in the same process. The process keeps
freed memory as a run does (:func:`ecomp.kernels.runtime.keep_freed_memory`). Medians of the repeats.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from ecomp.core.initialiser import l1_population  # noqa: E402
from ecomp.kernels import conv_forward  # noqa: E402
from ecomp.nets import convnet  # noqa: E402
from ecomp.nets.net_population import NetPopulation  # noqa: E402
from ecomp.nets.convnet import plan_size  # noqa: E402
from ecomp.kernels.runtime import keep_freed_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def large_conv_gflops(repeats: int) -> float:
    x, w = torch.randn(256, 64, 28, 28), torch.randn(64, 64, 3, 3)
    s = median_seconds(lambda: F.conv2d(x, w, padding=1), repeats)
    return 2 * 256 * 64 * 64 * 9 * 28 * 28 / s / 1e9


def gemm_gflops(repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / median_seconds(lambda: a @ b, repeats) / 1e9


def baseline_module(commit: str):
    """``ecomp/kernels/conv_forward.py`` as it was at ``commit``, loaded as a module."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:ecomp/kernels/conv_forward.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="ecomp-conv-")) / "conv_forward_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("conv_forward_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", default=None, help="a commit whose grouped pass to time beside this one")
    args = ap.parse_args()
    keep_freed_memory()
    baseline = baseline_module(args.baseline) if args.baseline else None
    torch.manual_seed(0)
    plan = convnet.lenet5((1, 28, 28), 10)
    parent = convnet.from_module(convnet.build_module(plan), plan)
    x = torch.rand(args.batch, 784)
    initial = l1_population(parent, args.size, 0.9, 0.207)
    def converged(keep: float) -> NetPopulation:
        member = l1_population(parent, 1, keep, keep).members[0]
        return NetPopulation(plan, [member] * args.size).take(list(range(args.size)))

    conv, gemm = large_conv_gflops(args.repeats), gemm_gflops(args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"population {args.size}, medians of {args.repeats}")
    print(f"one large convolution (256x64x28x28, 3x3): {conv:.1f} GFLOP/s; one 2048^3 GEMM: {gemm:.1f} GFLOP/s")
    print("| population | loop | grouped | GFLOP/s | share of the convolution's rate | loop/grouped |"
          + (" baseline grouped | baseline/now |" if baseline else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if baseline else ""))
    for name, pop in (("initial (100 architectures)", initial), ("one architecture, keep 0.55", converged(0.55)),
                      ("one architecture, keep 0.9", converged(0.9))):
        flops = 2 * args.batch * float(pop.sizes("macs").sum())
        loop = median_seconds(lambda: conv_forward.forward_loop(pop, x), args.repeats)
        grouped = median_seconds(lambda: conv_forward.forward_grouped(pop, x), args.repeats)
        row = (f"| {name} | {loop * 1e3:.1f} ms | {grouped * 1e3:.1f} ms | {flops / grouped / 1e9:.1f} | "
               f"{flops / grouped / 1e9 / conv:.2f} | {loop / grouped:.2f}x |")
        if baseline:
            before = median_seconds(lambda: baseline.forward_grouped(pop, x), args.repeats)
            row += f" {before * 1e3:.1f} ms | {before / grouped:.2f}x |"
        print(row, flush=True)
    print(f"parent MACs {plan_size(plan, 'macs')}")


if __name__ == "__main__":
    main()
