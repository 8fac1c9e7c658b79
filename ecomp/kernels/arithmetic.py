"""What decides the bits of a run's floats on this machine: the arithmetic's fingerprint.

Two runs of one config and seed give the same bits only when every kernel that rounds ran the
same code: the torch build, the vector width ATen dispatched to (``ATEN_CPU_CAPABILITY``), the
BLAS (MKL picks its own code path by CPU, whatever ATen does), the similarity kernels (native or
PyTorch) and, for the native ones, which copy of the C library ran (``ECOMP_KERNEL_ISA``). The
CPU model and its vector extensions stand in for what MKL and the C library decide by
themselves. The golden test asks for exact bits only where the whole fingerprint matches its
recording, and compares within a measured tolerance elsewhere.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from ecomp.kernels import c_library

# The CPU flags that change which vector code a library runs.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "amx_tile", "amx_bf16", "amx_int8")


def cpu() -> str:
    """The CPU's model name and vector extensions (``platform.processor()`` off Linux)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return platform.processor() or platform.machine()
    model, flags = "", set()
    for line in info.read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return f"{model} [{' '.join(f for f in VECTOR_FLAGS if f in flags)}]"


def fingerprint(native_similarity: bool) -> dict[str, str]:
    """Everything that decides the bits of a CPU run whose similarity runs natively or not."""
    mkl = torch.backends.mkl.is_available()
    return {
        "torch": f"{torch.__version__} ({torch.version.git_version[:12]})",
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": "mkl" if mkl else "other",
        "similarity": c_library.isa() if native_similarity else "torch",
        "cpu": cpu(),
    }
