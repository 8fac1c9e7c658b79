"""The residual population's forward pass: the per-network loop (the oracle), the CPU's PyTorch
pass (``each``: one network at a time, its stem and projections as products), the C pass (``C``:
the run's default on the CPU, ``ecomp/kernels/res_native.py``) and the grouped pass (one batch per
architecture, channels-last; a GPU's default), on ResNet populations of ``parent=resnet``'s
shape, with the PyTorch and C passes' GFLOP/s and their share of the larger of one large
convolution's rate and the FMA ceiling (``rates.py``), measured in the same process.

    python benchmarks/bench_resnet.py                    # ResNet-8 (16, 32, 64) on 28x28, batch 100
    python benchmarks/bench_resnet.py --threads 1 --repeats 3
    python benchmarks/bench_resnet.py --depth 20 --widths 16,32,64
    python benchmarks/bench_resnet.py --profile          # then where one default pass at keep 0.9 spends its time

Three populations, as in ``bench_conv.py``: the initial one (100 keep ratios from 0.9 to 0.207:
100 architectures) and two of one architecture (keep 0.55 and 0.9: what evolution converges
to). ``nchw``: the grouped pass on ``NCHW`` maps, the layout it replaced. ``bf16``: the CPU's pass
under ``evolution.precision=bfloat16`` (torch.autocast: oneDNN's bfloat16 kernels, AMX where the
CPU has them), representations converted back to float32. Medians of the repeats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from bench_conv import median_seconds  # noqa: E402  (this folder is the script's: sys.path[0])
from rates import conv_gflops, fma_gflops  # noqa: E402
from ecomp.core.fitness import in_precision  # noqa: E402
from ecomp.core.initialiser import l1_population  # noqa: E402
from ecomp.kernels import net_forward, res_forward, res_native  # noqa: E402
from ecomp.kernels.runtime import keep_freed_memory  # noqa: E402
from ecomp.nets.resnet import cifar_resnet  # noqa: E402


def conv_rates(repeats: int) -> None:
    """GFLOP/s of one population's worth of 3x3 convolutions of 100 28x28 channels-last maps, a fresh
    weight at every call (as the individuals have them): per network, and grouped by network."""
    for c in (9, 16):
        x = torch.rand(100, c, 28, 28).contiguous(memory_format=torch.channels_last)
        ws = [torch.rand(c, c, 3, 3) for _ in range(20)]
        xg = torch.rand(100, 20 * c, 28, 28).contiguous(memory_format=torch.channels_last)
        wg = torch.cat(ws)
        flops = 2 * 100 * c * c * 9 * 28 * 28 * len(ws)
        cells = []
        for dtype in (torch.float32, torch.bfloat16):
            xd, wd, xgd, wgd = x.to(dtype), [w.to(dtype) for w in ws], xg.to(dtype), wg.to(dtype)
            one = median_seconds(lambda: [F.conv2d(xd, w, None, 1, 1) for w in wd], repeats)
            grouped = median_seconds(lambda: F.conv2d(xgd, wgd, None, 1, 1, 1, len(ws)), repeats)
            cells.append(f"{str(dtype)[6:]}: {flops / one / 1e9:.1f} per network, {flops / grouped / 1e9:.1f} grouped")
        print(f"{c:>2} channels, 20 networks: " + "; ".join(cells) + " GFLOP/s")


def loop_bf16(pop, x: torch.Tensor) -> None:
    """The run's pass under ``evolution.precision=bfloat16`` (:func:`ecomp.core.fitness.in_precision`),
    its representations read back as float32 as the similarity reads them."""
    with in_precision("bfloat16", x.device):
        _, hidden, _ = net_forward.forward(pop, x, "flat")
    [[a.float() for a in layer] for layer in hidden]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--widths", default="16,32,64")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="torch.profiler's table of one default pass at keep 0.9")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = cifar_resnet((1, 28, 28), 10, args.depth, tuple(int(w) for w in args.widths.split(",")))
    torch.manual_seed(0)
    parent = plan.network(plan.build(batchnorm=True).eval())
    x = torch.rand(args.batch, 784)
    keep_freed_memory()                                          # as run_experiment does
    conv = conv_gflops("cpu", args.repeats)
    ceiling = max(conv, fma_gflops())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-{args.depth} {plan.widths}, "
          f"batch {args.batch}; one large convolution (rates.py): {conv:.1f} GFLOP/s, the larger of it and the "
          f"FMA ceiling {ceiling:.1f}")
    conv_rates(args.repeats)
    print(f"{'population':<22}{'MMAC/img':>9}{'loop s':>9}{'each s':>9}{'loop/each':>10}{'nchw s':>9}{'grouped s':>10}"
          f"{'each GFLOP/s':>13}{'share':>7}{'bf16 s':>8}{'C s':>8}{'each/C':>7}{'C GFLOP/s':>10}{'share':>7}")
    pops = {"initial (100 archs)": l1_population(parent, args.size, 0.9, 0.207),
            "keep 0.55 (1 arch)": l1_population(parent, args.size, 0.55, 0.55),
            "keep 0.9 (1 arch)": l1_population(parent, args.size, 0.9, 0.9)}
    seconds: dict[str, float] = {}
    flop: dict[str, float] = {}
    for name, pop in pops.items():
        macs = float(pop.sizes("macs").sum())
        loop = median_seconds(lambda: res_forward.forward_loop(pop, x, "flat"), args.repeats)
        each = median_seconds(lambda: res_forward.forward_each(pop, x, "flat"), args.repeats)
        nchw = median_seconds(lambda: res_forward.forward_grouped(pop, x, "flat", channels_last=False), args.repeats)
        grouped = median_seconds(lambda: res_forward.forward_grouped(pop, x, "flat"), args.repeats)
        bf16 = median_seconds(lambda: loop_bf16(pop, x), args.repeats)
        c = median_seconds(lambda: res_native.forward(pop, x, "flat"), args.repeats)
        rate, c_rate = 2 * macs * args.batch / each / 1e9, 2 * macs * args.batch / c / 1e9
        seconds[name], flop[name] = c, 2 * macs * args.batch
        print(f"{name:<22}{macs / pop.size / 1e6:>9.2f}{loop:>9.3f}{each:>9.3f}{loop / each:>10.2f}{nchw:>9.3f}"
              f"{grouped:>10.3f}{rate:>13.1f}{rate / ceiling:>7.2f}{bf16:>8.3f}{c:>8.3f}{each / c:>7.2f}{c_rate:>10.1f}"
              f"{c_rate / ceiling:>7.2f}")

    run_floor(flop, seconds, conv, args)
    if args.profile:
        profile(pops["keep 0.9 (1 arch)"], x)


def profile(pop, x: torch.Tensor) -> None:
    """Each operator's share of one default pass (``forward_each``), by input shape (a convolution's rate follows from
    its shapes: ``2 * batch * out_h * out_w * out_c * in_c * k * k`` FLOPs per call)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    res_forward.forward_each(pop, x, "flat")
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        res_forward.forward_each(pop, x, "flat")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=14,
                                                           max_name_column_width=26, max_shapes_column_width=56))


def run_floor(flop: dict[str, float], seconds: dict[str, float], conv: float, args) -> None:
    """What one default run's forward passes cost at the least: its 101 evaluations of the evolution
    on populations no smaller than the initial one (EComp's sizes grow under scenario 121) and the
    final pick's 100 batches at keep 0.9's size (scenario 121 returns about 0.87 of the units), at one
    large convolution's rate and at the default pass's measured rates (``--size 100 --batch 100`` only)."""
    if args.size != 100 or args.batch != 100:
        return
    initial, final = "initial (100 archs)", "keep 0.9 (1 arch)"
    work = 101 * flop[initial] + 100 * flop[final]
    loop = 101 * seconds[initial] + 100 * seconds[final]
    fma = fma_gflops()
    print(f"a default run's forward passes (101 evaluations at the initial sizes or more, 100 at keep 0.9's): "
          f"at least {work / 1e12:.1f} TFLOP: {work / conv / 1e9:.0f} s at one large convolution's rate, "
          f"{loop:.0f} s at the C pass's rates here"
          + (f", {work / max(fma, conv) / 1e9:.0f} s at the larger of it and the FMA ceiling ({fma:.1f} GFLOP/s)"
             if fma else ""))


if __name__ == "__main__":
    main()
