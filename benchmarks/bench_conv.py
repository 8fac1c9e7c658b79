"""The convolutional population's forward pass: grouped (one batch per architecture) against
the per-network loop, on LeNet-5 populations, with achieved GFLOP/s next to one large
convolution measured in the same process.

    python benchmarks/bench_conv.py                 # batch 100, population 100, 5 repeats
    python benchmarks/bench_conv.py --batch 1000 --repeats 3

Two populations: the initial one (100 keep ratios: 100 architectures, as generation 0 is) and
one of a single architecture (keep 0.55: what evolution converges to). Medians of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from ecomp.core.initialiser import l1_population  # noqa: E402
from ecomp.kernels import conv_forward  # noqa: E402
from ecomp.nets import convnet  # noqa: E402
from ecomp.nets.conv_population import ConvPopulation  # noqa: E402
from ecomp.nets.convnet import plan_size  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    plan = convnet.lenet5((1, 28, 28), 10)
    parent = convnet.from_module(convnet.build_module(plan), plan)
    x = torch.rand(args.batch, 784)
    initial = l1_population(parent, args.size, 0.9, 0.207)
    one = ConvPopulation(plan, [initial.members[args.size // 2]] * args.size).take(list(range(args.size)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"population {args.size}, medians of {args.repeats}")
    print(f"one large convolution (256x64x28x28, 3x3): {large_conv_gflops(args.repeats):.1f} GFLOP/s")
    for name, pop in (("initial (100 architectures)", initial), ("one architecture", one)):
        flops = 2 * args.batch * float(pop.sizes("macs").sum())
        loop = median_seconds(lambda: conv_forward.forward_loop(pop, x), args.repeats)
        grouped = median_seconds(lambda: conv_forward.forward_grouped(pop, x), args.repeats)
        print(f"{name}: loop {loop * 1e3:.1f} ms ({flops / loop / 1e9:.1f} GFLOP/s), grouped {grouped * 1e3:.1f} ms "
              f"({flops / grouped / 1e9:.1f} GFLOP/s), loop/grouped {loop / grouped:.2f}x")
    print(f"parent MACs {plan_size(plan, 'macs')}")


if __name__ == "__main__":
    main()
