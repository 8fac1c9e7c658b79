"""The C library behind :mod:`ecomp.kernels.native`: compiled on first use, loaded with :mod:`ctypes`.

``csrc/tsne.c`` holds the fused t-SNE and Gram kernels, ``csrc/ops.c`` crossover's copies and a
convolutional population's per-individual feature copies, ``csrc/conv.c`` a convolutional
population's fused max-pooled convolution stages, ``csrc/resnet.c`` a residual population's whole
forward pass (``benchmarks/bench_kernels.py`` and ``benchmarks/bench_conv.py``
time them against the PyTorch code), ``csrc/blocked.c`` wide Grams and linear stages in the GEMM
library's order, ``csrc/peak.c`` the machine's FMA ceiling (``benchmarks/rates.py``).

How it is built: the system C compiler (``$CC``, else ``cc``) compiles ``ecomp/kernels/csrc`` once
into a cache directory (``$ECOMP_CACHE_DIR``, else ``~/.cache/ecomp``), under a name that
hashes the sources, the flags, the compiler's version and the machine, so a changed source
or compiler gets a fresh build and parallel jobs or cluster nodes sharing a home directory
never load a stale or half-written one (each build is written to a temporary name and
renamed). No ``-march=native``: the library carries several copies of its kernels and picks
one at load time, so one build serves every x86-64 node: the t-SNE kernels and crossover's
copies a baseline and an AVX2 + FMA copy (the t-SNE Grams an AVX-512F one too); the fused
convolution, the residual pass, the blocked products and the FMA ceiling an AVX-512F and an
AVX2 + FMA copy, with the PyTorch path where neither runs. ``ECOMP_KERNEL_ISA=baseline`` makes
it run the baseline copies on any CPU (and the PyTorch path for the kernels without one),
``avx2`` the AVX2 copies where the AVX-512 ones would run (the tests reach the copies that way;
``auto``, the default, takes the widest copy the CPU has). No ``-ffast-math``: IEEE
arithmetic, only the marked sums are reordered, so results are the same from run to run and do
not depend on the number of threads.

Threads: built with ``-fopenmp``, the library binds to the ``libgomp.so.1`` that PyTorch
has already loaded and uses ``torch.get_num_threads()`` of its threads. A compiler without
OpenMP gives a serial library; the point sets are then split over Python threads (ctypes
releases the GIL).

The loaded library is process-wide (a shared object is loaded once per process); the first
call builds or finds it, later calls return it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path


log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).with_name("csrc")
SOURCES = ("tsne.c", "tsne_body.h", "ops.c", "conv.c", "conv_body.h", "lanes_body.h", "resnet.c", "res_body.h",
           "blocked.c", "blocked_body.h", "peak.c", "transpose.h", "vec_ops.h", "vec_done.h")
FLAGS = ("-O3", "-fPIC", "-shared", "-std=gnu11", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math")
OPENMP = ("-fopenmp",)        # tried first; a compiler without OpenMP builds the serial library
ABI_VERSION = 22
ISAS = ("auto", "avx2", "baseline")     # $ECOMP_KERNEL_ISA: auto picks the best copy the CPU runs

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None

_f32 = ctypes.POINTER(ctypes.c_float)
_f64 = ctypes.POINTER(ctypes.c_double)
_i64 = ctypes.POINTER(ctypes.c_int64)
_i32 = ctypes.POINTER(ctypes.c_int32)


class NativeUnavailable(RuntimeError):
    """The C kernels could not be compiled or loaded here (the message says why)."""


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC") or "cc")


def cache_dir() -> Path:
    return Path(os.environ.get("ECOMP_CACHE_DIR") or Path.home() / ".cache" / "ecomp") / "kernels"


def _build_key(cc: str, flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((SOURCE_DIR / name).read_bytes())
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    h.update("\0".join([*flags, cc, version, platform.machine(), platform.system()]).encode())
    return h.hexdigest()[:16]


def _compile(cc: str, flags: tuple[str, ...]) -> Path:
    """The cached library built with ``flags`` (compiled now if it is not there yet)."""
    target = cache_dir() / f"tsne-{_build_key(cc, flags)}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, *flags, *(str(SOURCE_DIR / f) for f in SOURCES if f.endswith(".c")), "-o", tmp, "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            log.debug("%s failed:\n%s", " ".join(cmd), res.stderr)
            first = (res.stderr.strip().splitlines() or ["no output"])[0]
            raise NativeUnavailable(f"compiling {SOURCE_DIR / 'tsne.c'} with {cc} failed: {first}")
        os.replace(tmp, target)                      # atomic: a parallel job sees all of it or nothing
        log.info("compiled the native similarity kernels into %s", target)
        return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build() -> ctypes.CDLL:
    cc = compiler()
    if cc is None:
        raise NativeUnavailable(f"no C compiler found ({os.environ.get('CC') or 'cc'} is not on PATH; set CC)")
    try:
        target = _compile(cc, FLAGS + OPENMP)
    except NativeUnavailable as exc:
        log.info("%s; building without OpenMP", exc)
        target = _compile(cc, FLAGS)
    lib = ctypes.CDLL(str(target))
    if lib.ecomp_abi_version() != ABI_VERSION:
        raise NativeUnavailable(f"{target} has ABI {lib.ecomp_abi_version()}, expected {ABI_VERSION}")
    lib.ecomp_force_baseline.restype = None
    lib.ecomp_conv_force_avx2.restype = None
    if requested_isa() == "baseline":
        lib.ecomp_force_baseline()
    elif requested_isa() == "avx2":
        lib.ecomp_conv_force_avx2()
    span = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int]        # m0, m1, nthreads
    lib.ecomp_conditionals.argtypes = [_f32, ctypes.c_int, _f64, ctypes.c_double, ctypes.c_double, ctypes.c_int,
                                       _f32, _f64, *span]
    lib.ecomp_conditionals.restype = ctypes.c_int
    lib.ecomp_joint.argtypes = [_f32, ctypes.c_int, _f32, *span]
    lib.ecomp_joint.restype = ctypes.c_int
    lib.ecomp_exp_log.argtypes = [_f32, _f32, _f32, ctypes.c_int64]
    lib.ecomp_exp_log.restype = None
    lib.ecomp_similarity_acts.argtypes = [_i64, _i64, _i32, _i32, ctypes.c_int, _f32, _f64, _i64, ctypes.c_double,
                                          ctypes.c_double, ctypes.c_int, _f64, *span]
    lib.ecomp_similarity_acts.restype = ctypes.c_int
    lib.ecomp_similarity_grams.argtypes = [_f32, ctypes.c_int, _f32, _f64, _i64, ctypes.c_double, ctypes.c_double,
                                           ctypes.c_int, _f64, *span]
    lib.ecomp_similarity_grams.restype = ctypes.c_int
    lib.ecomp_grams_acts.argtypes = [_i64, _i64, _i32, _i32, ctypes.c_int, _f32, _f64, *span]
    lib.ecomp_grams_acts.restype = ctypes.c_int
    lib.ecomp_recombine.argtypes = [ctypes.c_int64, *[_i64] * 11, ctypes.c_int, ctypes.c_int]
    lib.ecomp_recombine.restype = None
    lib.ecomp_recombine_inplace.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.c_int64, *[_i64] * 4, ctypes.c_int64, _i64, ctypes.c_int,
                                            ctypes.c_int]
    lib.ecomp_recombine_inplace.restype = None
    lib.ecomp_gather_runs.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_int]
    lib.ecomp_gather_runs.restype = None
    lib.ecomp_conv_block.argtypes = []
    lib.ecomp_conv_block.restype = ctypes.c_int
    lib.ecomp_conv_pool.argtypes = [ctypes.c_int64, _i64, *[ctypes.c_int64] * 15, _i64, ctypes.c_int64, ctypes.c_int]
    lib.ecomp_conv_pool.restype = ctypes.c_int
    lib.ecomp_pad_transpose.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_int]
    lib.ecomp_pad_transpose.restype = ctypes.c_int
    lib.ecomp_conv_lanes.argtypes = [ctypes.c_int64, ctypes.c_int64]
    lib.ecomp_conv_lanes.restype = ctypes.c_int
    lib.ecomp_resnet_forward.argtypes = [*[ctypes.c_int64] * 8, _i64, ctypes.c_int64, *[_i64] * 5, ctypes.c_int64,
                                         ctypes.c_int64, _i64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.ecomp_resnet_forward.restype = ctypes.c_int
    lib.ecomp_gram_blocked.argtypes = [_i64, _i64, _i32, _i64, ctypes.c_int64, _f32, *span]
    lib.ecomp_gram_blocked.restype = ctypes.c_int
    lib.ecomp_linear_blocked.argtypes = [ctypes.c_int64] * 11 + [ctypes.c_int, ctypes.c_int64, *span]
    lib.ecomp_linear_blocked.restype = ctypes.c_int
    lib.ecomp_fma_peak.argtypes = [ctypes.c_int64, ctypes.c_int, _f32]
    lib.ecomp_fma_peak.restype = ctypes.c_int
    lib.ecomp_fma_shape.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int, _f32]
    lib.ecomp_fma_shape.restype = ctypes.c_int
    return lib


def requested_isa() -> str:
    """``$ECOMP_KERNEL_ISA`` (``auto`` when unset); a one-line :class:`ValueError` for anything else."""
    isa = os.environ.get("ECOMP_KERNEL_ISA") or "auto"
    if isa not in ISAS:
        raise ValueError(f"ECOMP_KERNEL_ISA={isa!r}: expected one of {', '.join(ISAS)}")
    return isa


def load() -> ctypes.CDLL:
    """The compiled library (built on the first call); :class:`NativeUnavailable` if it cannot be."""
    global _lib, _error
    with _lock:
        if _lib is None and _error is None:
            try:
                _lib = _build()
            except (OSError, subprocess.SubprocessError, NativeUnavailable) as exc:
                _error = str(exc)
        if _lib is None:
            raise NativeUnavailable(f"native similarity kernels unavailable: {_error}")
        return _lib


def available() -> bool:
    try:
        load()
        return True
    except NativeUnavailable:
        return False


def isa() -> str:
    """How the kernels run here: ``avx2`` or ``baseline``, ``+openmp`` if threaded by OpenMP."""
    lib = load()
    return ("avx2" if lib.ecomp_isa() else "baseline") + ("+openmp" if lib.ecomp_openmp() else "")
