"""The figures every method's returned network is judged by, computed in one place.

Sizes are relative to the parent: ``compression`` counts prunable units (hidden neurons and conv
channels: the paper's measure), ``params_ratio`` weights and biases, ``macs_ratio``
multiply-accumulates per image. Each count is the network's own (:meth:`Structure.size`), which
the tests hold equal to torch's FLOP counter on the built module (:func:`ecomp.nets.sizes.counted_macs`);
the counter itself is not run here: entering any torch dispatch mode imports ``torch._dynamo``,
about 5 s of every run's start-up (``benchmarks/README.md``).
All are logged for every run, whichever EComp's fitness used (``fitness.compression``).
Latencies (:func:`cost_metrics`) depend on the machine: they are logged, never hashed or compared
across machines.
"""

from __future__ import annotations

import statistics
import time

import torch

from ecomp.nets.data import Split
from ecomp.nets.structure import Structure, accuracy, detached

LATENCY_BATCH = 256
# The logged metrics that are readings of the machine (wall times, GPU memory), not of the run's
# numbers: two runs of one config and seed agree on every other metric, bit for bit.
MACHINE_READINGS = ("run_seconds", "tracking_seconds", "seconds_per_generation", "best_latency_ms",
                    "parent_latency_ms", "gpu_peak_mib")
LATENCY_WARMUP, LATENCY_REPEATS = 3, 15


def network_metrics(layers: Structure, parent: Structure, val: Split, test: Split, prefix: str = "best_") -> dict[str, float]:
    """``<prefix>{test_accuracy, val_accuracy, compression, hidden_units, parameters, params_ratio,
    macs, macs_ratio}``."""
    layers, parent = detached(layers), detached(parent)
    units, params, macs = (layers.size(k) for k in ("units", "params", "macs"))
    parent_units, parent_params, parent_macs = (parent.size(k) for k in ("units", "params", "macs"))
    out = {
        "test_accuracy": accuracy(layers, test.x, test.y),
        "val_accuracy": accuracy(layers, val.x, val.y) if val.x.shape[0] else float("nan"),
        "compression": units / parent_units,
        "hidden_units": float(units),
        "parameters": float(params),
        "params_ratio": params / parent_params,
        "macs": float(macs),
        "macs_ratio": macs / parent_macs,
    }
    return {prefix + k: float(v) for k, v in out.items()}


@torch.inference_mode()
def latency_ms(net: Structure, x: torch.Tensor, warmup: int = LATENCY_WARMUP, repeats: int = LATENCY_REPEATS) -> float:
    """Median wall time (ms) of the network's module on ``x``, after ``warmup`` untimed calls."""
    model = detached(net).to_module().eval()
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def cost_metrics(best: Structure, parent: Structure, test: Split) -> dict[str, float]:
    """``parent_macs`` and, on the CPU at batch ``LATENCY_BATCH`` (test images), ``best_latency_ms``
    and ``parent_latency_ms``."""
    x = test.x[:LATENCY_BATCH].contiguous()
    return {"parent_macs": float(detached(parent).size("macs")),
            "best_latency_ms": latency_ms(best, x), "parent_latency_ms": latency_ms(parent, x)}
