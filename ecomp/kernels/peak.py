"""The machine's own rates, as the benchmarks set every product against them: the FMA ceiling
(independent chains in registers) and the fused convolution's inner loops alone, operands in the
first-level cache (``csrc/peak.c``, loaded with the rest of the C library)."""

from __future__ import annotations

import ctypes
import time

import torch

from ecomp.kernels.c_library import load


def fma_peak(steps: int, threads: int | None = None) -> tuple[int, float, float]:
    """``steps`` rounds of 12 independent vector FMA chains on each of ``threads`` threads (default:
    torch's), in registers only (``csrc/peak.c``): returns the FLOPs done, the seconds taken and
    the chains' final values summed (each lane of chain ``j`` ends at ``1 + (j - 1) * 0.999^steps``).
    No FLOPs where the library has no vector copy here."""
    threads, width, seconds, sink = _timed_chains(lambda lib, t, out: lib.ecomp_fma_peak(steps, t, out), threads)
    return threads * steps * 12 * width * 2, seconds, sink


def _timed_chains(call, threads: int | None) -> tuple[int, int, float, float]:
    """``call(lib, threads, sink)``, one of ``csrc/peak.c``'s entry points, timed: the threads it
    ran on (default: torch's), the vector width it returned, its seconds and the sink's value."""
    lib = load()
    threads = threads or (torch.get_num_threads() if lib.ecomp_openmp() else 1)
    sink = ctypes.c_float()
    start = time.perf_counter()
    width = call(lib, threads, ctypes.byref(sink))
    return threads, width, time.perf_counter() - start, sink.value


FMA_SHAPES = {"first": (0, 16), "later": (1, 8), "images": (2, 24)}   # name -> (index, FMAs per step)


def fma_shape(shape: str, reps: int, threads: int | None = None) -> tuple[int, float, float]:
    """``reps`` passes of 25 steps of the fused convolution's inner loop ``shape`` (:data:`FMA_SHAPES`;
    ``csrc/peak.c``) on each of ``threads`` threads, its operands in the first-level cache: the
    FLOPs done, the seconds taken and the accumulators' sum over every lane. What the kernel's
    register blocking can reach here, beside :func:`fma_peak`'s ceiling. No FLOPs where the
    library has no vector copy here."""
    if shape not in FMA_SHAPES:
        raise ValueError(f"fma_shape: shape {shape!r} is not one of {sorted(FMA_SHAPES)}")
    index, fmas = FMA_SHAPES[shape]
    threads, width, seconds, sink = _timed_chains(lambda lib, t, out: lib.ecomp_fma_shape(index, reps, t, out), threads)
    return threads * reps * 25 * fmas * width * 2, seconds, sink
