"""The machine's reference rates, which the benchmarks quote their shares of.

* :func:`conv_gflops`: one large convolution, 128 channels-last 28x28 maps of 64 channels, 64
  filters of 3x3, with the process keeping freed memory as a run does
  (:func:`ecomp.kernels.runtime.keep_freed_memory`). Its 25.7 MB output is under glibc's 32 MiB
  ``mmap`` ceiling, so it is reused from the heap from call to call and the rate is oneDNN's
  arithmetic. (The reference before 2026-12-06, 256 NCHW maps, wrote a 51 MB output that was
  page-faulted in at every call: it measured 210-250 GFLOP/s where this one measures 430-490 on
  the same machine in the same process; ``benchmarks/README.md``.)
* :func:`gemm_gflops`: one 2048^3 float32 GEMM.
* :func:`fma_gflops`: the vector units' ceiling, independent FMA chains in registers on every
  thread (``ecomp/kernels/csrc/peak.c``): no float32 product can run faster here, so a floor
  drawn from it is a bound. (On the AMD EPYC of 2026-12-06 the reference convolution reaches
  0.9-1.0 of it, and measured a few per cent above it in some processes: the VM's clock and
  noise. The bounds the benchmarks print take the larger of the two.)
* :func:`shape_gflops`: the fused convolution's inner loops alone, in the first-level cache:
  what its register blocking can reach before any memory traffic.

All are medians of ``repeats`` calls after one warm-up call.

    python benchmarks/rates.py              # the three rates
    python benchmarks/rates.py --compare    # and the reference convolution at 256 / 128 / 64 maps, both layouts
    python benchmarks/rates.py --shapes     # and the fused convolution's inner loops alone (shape_gflops)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from ecomp.kernels.runtime import keep_freed_memory  # noqa: E402

CONV = (128, 64, 28, 28, 64, 3)      # images, channels in, height, width, filters, kernel


def _median(fn, device: str, repeats: int) -> float:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    fn()
    ts = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def conv_gflops(device: str = "cpu", repeats: int = 5) -> float:
    keep_freed_memory()
    n, c, h, w, f, k = CONV
    x = torch.randn(n, c, h, w, device=device).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(f, c, k, k, device=device).contiguous(memory_format=torch.channels_last)
    s = _median(lambda: F.conv2d(x, wt, padding=k // 2), device, repeats)
    return 2 * n * c * f * k * k * h * w / s / 1e9


def gemm_gflops(device: str = "cpu", repeats: int = 5, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / _median(lambda: a @ b, device, repeats) / 1e9


def _native_gflops(run, repeats: int) -> float | None:
    """The median GFLOP/s of ``repeats`` calls of ``run()`` (one of ``ecomp.kernels.peak``'s
    ``(flops, seconds, sink)`` timers) after a warm-up call; None where the C library does not build
    or has no vector copy here (it then does no FLOPs)."""
    from ecomp.kernels.c_library import NativeUnavailable
    try:
        if run()[0] == 0:
            return None
    except NativeUnavailable:
        return None
    return statistics.median(flops / seconds for flops, seconds, _ in (run() for _ in range(repeats))) / 1e9


def fma_gflops(device: str = "cpu", repeats: int = 5, steps: int = 20_000_000) -> float | None:
    """The CPU's FMA ceiling in GFLOP/s (``ecomp.kernels.peak.fma_peak``), the median of
    ``repeats`` calls of ``steps`` rounds (about 0.03 s each on 2 AVX-512 cores); None on a GPU or where the C library
    has no vector copy. It runs the copy the kernels run (``ECOMP_KERNEL_ISA``): under ``avx2``
    on an AVX-512 CPU it is that copy's ceiling, half the machine's."""
    if device != "cpu":
        return None
    from ecomp.kernels import peak
    return _native_gflops(lambda: peak.fma_peak(steps), repeats)


def shape_gflops(repeats: int = 5, reps: int = 1_000_000) -> dict[str, float] | None:
    """GFLOP/s of the fused convolution's inner loops alone, operands in the first-level cache
    (``ecomp.kernels.peak.fma_shape``): ``first`` (two vectors of filters, the first stage),
    ``later`` (one vector of at most 16 filters per individual, the filters in the lanes) and
    ``images`` (a vector of images by six filters: the images-in-lanes pass), medians of ``repeats`` calls
    of ``reps`` passes; None where the C library has no vector copy. Against :func:`fma_gflops`:
    what the register blocking itself can reach, before memory, pooling or stores."""
    from ecomp.kernels import peak
    rates = {shape: _native_gflops(lambda shape=shape: peak.fma_shape(shape, reps), repeats)
             for shape in peak.FMA_SHAPES}
    return None if None in rates.values() else rates


def measured_apart() -> str:
    """This file's one-line report from a fresh process (so that the caller's own timings share
    nothing with it): for scripts that time whole processes (``bench_runs.py``, ``bench_grid.py``)."""
    res = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600)
    return res.stdout.strip() or f"rates.py failed: {res.stderr.strip().splitlines()[-1:]}"


def compare(repeats: int = 7) -> None:
    """The same 64 -> 64 channel 3x3 convolution at 256 / 128 / 64 maps, NCHW and channels-last, in
    this process (which keeps freed memory): why the reference is 128 channels-last maps."""
    keep_freed_memory()
    print("| maps | NCHW GFLOP/s | channels-last GFLOP/s | output MB |")
    print("|---|---|---|---|")
    for n in (256, 128, 64):
        rates = []
        for last in (False, True):
            x, w = torch.randn(n, 64, 28, 28), torch.randn(64, 64, 3, 3)
            if last:
                x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
            rates.append(2 * n * 64 * 64 * 9 * 784 / _median(lambda: F.conv2d(x, w, padding=1), "cpu", repeats) / 1e9)
        print(f"| {n} | {rates[0]:.1f} | {rates[1]:.1f} | {n * 64 * 784 * 4 / 1e6:.1f} |")


if __name__ == "__main__":
    if "--compare" in sys.argv[1:]:
        compare()
    fma = fma_gflops()
    print(f"one large convolution {conv_gflops():.1f} GFLOP/s, one 2048^3 GEMM {gemm_gflops():.1f} GFLOP/s"
          + (f", the FMA ceiling {fma:.1f} GFLOP/s" if fma else "") + f" ({torch.get_num_threads()} threads)")
    if "--shapes" in sys.argv[1:] and fma:
        shapes = shape_gflops() or {}
        print("the fused convolution's inner loops alone: "
              + ", ".join(f"{k} {v:.1f} GFLOP/s ({v / fma:.2f} of the ceiling)" for k, v in shapes.items()))
