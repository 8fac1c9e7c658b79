"""The compute backend of a run: chosen once, from ``device`` and ``similarity.kernels``, and passed in.

Every choice between compute paths is a field of :class:`Backend`; the algorithm reads the
fields and never compares a device or kernels string itself. The paths a backend chooses
between compute the same numbers (bit for bit for the copies of crossover, mutation and
elitism; within float rounding for products and the similarity), so the choice is about
speed only, and the tests force each path against its straightforward oracle.

* ``native_similarity``: the fused C kernels for t-SNE and CKA (:mod:`ecomp.kernels.native`)
  instead of the PyTorch ones; ``similarity.kernels``: ``auto`` (native where they build, on
  the CPU; else PyTorch with one warning), ``native`` (an error if they cannot be had) or
  ``torch``.
* ``native_copies``: crossover's copies by the C kernels (and in place once the population has
  one architecture), a convolutional population's fused convolution stages
  (:func:`ecomp.kernels.native.conv_pool`) and a residual population's whole pass
  (:mod:`ecomp.kernels.res_native`): the CPU's float32 path whenever the library builds,
  whatever ``similarity.kernels`` says, because the copies are exact either way, the fused
  stages sum in the order of the PyTorch path they replace (the same bits on the CPUs measured)
  and the residual pass agrees with its oracle within float rounding.
* ``batched_max_rows``: a one-architecture population's later layers as one batched product
  up to this many images per network (above it, one GEMM per network is at BLAS speed on a
  CPU and the stacked path loses: ``benchmarks/bench_kernels.py``); ``None``: at any batch (a GPU).
* ``padded``: a mixed-width population as zero-padded batched products (:mod:`ecomp.kernels.padded`),
  on a GPU, where a per-network loop is hundreds of kernel launches; the CPU keeps the loop.
* ``gathered``: crossover and mutation as one index gather per layer instead of a
  per-individual loop (a GPU).
* ``host_check_every``: the t-SNE search checks convergence on the host every this many
  iterations (every one on the CPU; a GPU avoids the synchronisation).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from ecomp.errors import ConfigError
from ecomp.kernels import c_library

log = logging.getLogger(__name__)

KERNELS = ("auto", "native", "torch")      # similarity.kernels
CPU_BATCHED_MAX_ROWS = 256


class BackendError(ConfigError):
    """The requested kernels cannot run here; the message is one line."""


@dataclass(frozen=True)
class Backend:
    device: torch.device
    native_similarity: bool
    batched_max_rows: int | None
    padded: bool
    gathered: bool
    host_check_every: int

    @property
    def native_copies(self) -> bool:
        """Crossover's copies, the fused convolutions and the residual pass by the C kernels (the
        library is built on first ask, then cached)."""
        return self.device.type == "cpu" and c_library.available()

    @property
    def kernels(self) -> str:
        """What the similarity runs on: ``native`` or ``torch`` (the run's ``kernels`` tag)."""
        return "native" if self.native_similarity else "torch"

    def synchronize(self) -> None:
        """Wait for the work queued on the device (nothing to wait for on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def batched(self, rows: int) -> bool:
        """A one-architecture population of ``rows`` images per network takes the batched products."""
        return self.batched_max_rows is None or rows <= self.batched_max_rows


def resolve(device: torch.device | str = "cpu", kernels: str = "auto") -> Backend:
    """The backend for tensors on ``device`` with ``similarity.kernels=kernels``;
    :class:`BackendError` if ``kernels`` is unknown or ``native`` cannot be had."""
    device = torch.device(device)
    if kernels not in KERNELS:
        raise BackendError(f"similarity.kernels={kernels!r}: expected one of {', '.join(KERNELS)}")
    on_cpu = device.type == "cpu"
    if kernels == "native":
        if not on_cpu:
            raise BackendError(f"similarity.kernels=native: the C kernels run on the CPU, not on {device}; "
                               "use auto or torch")
        try:
            c_library.load()
        except c_library.NativeUnavailable as exc:
            raise BackendError(str(exc).splitlines()[0]) from None
    native_similarity = on_cpu and kernels != "torch" and c_library.available()   # (auto: built on first ask)
    if on_cpu and kernels == "auto" and not native_similarity:
        _warn_fallback()
    return Backend(device=device, native_similarity=native_similarity,
                   batched_max_rows=CPU_BATCHED_MAX_ROWS if on_cpu else None,
                   padded=not on_cpu, gathered=not on_cpu, host_check_every=1 if on_cpu else 3)


def usable_devices(device: str) -> str | None:
    """None if ``device`` can run here, else what can (for the config's one-line error)."""
    if device == "cpu":
        return None
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            return "cpu (no CUDA GPU is available on this machine)"
        index = device.split(":")[1] if ":" in device else "0"
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            return f"cpu or cuda:0..cuda:{torch.cuda.device_count() - 1}"
        return None
    return "cpu, cuda or cuda:<index>"


def for_tensor(t: torch.Tensor) -> Backend:
    """The default backend for ``t``'s device (``kernels=auto``): what a function given no backend uses."""
    return resolve(t.device, "auto")


@functools.cache
def _warn_fallback() -> None:
    try:
        c_library.load()
    except c_library.NativeUnavailable as exc:
        log.warning("%s; using the PyTorch similarity path (slower, same results within float rounding)", exc)
