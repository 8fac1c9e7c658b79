"""Fused C kernels for the similarity (and crossover's copies): compiled on first use,
loaded with :mod:`ctypes`.

Why: the PyTorch path (:mod:`ecomp.kernels.tsne_torch`) makes a dozen passes over every ``(N, N)``
matrix per perplexity iteration and as many again for the KL, each a separate kernel over
2 million entries per generation. ``ecomp/csrc/tsne.c`` does all of it one point set at a
time while the set sits in cache: the Gram matrix straight from the activations, the
shifted distances, the Halley search with a vectorised ``exp``, the symmetrised joint and
the KL with a vectorised ``log``. ``ecomp/csrc/ops.c`` writes each layer's crossover children in
one threaded pass (``benchmarks/bench_kernels.py`` times both against the PyTorch code).

How it is built: the system C compiler (``$CC``, else ``cc``) compiles ``ecomp/csrc`` once
into a cache directory (``$ECOMP_CACHE_DIR``, else ``~/.cache/ecomp``), under a name that
hashes the sources, the flags, the compiler's version and the machine, so a changed source
or compiler gets a fresh build and parallel jobs or cluster nodes sharing a home directory
never load a stale or half-written one (each build is written to a temporary name and
renamed). No ``-march=native``: the library carries a baseline and an AVX2 + FMA copy of
every kernel and picks one at load time, so one build serves every x86-64 node. No
``-ffast-math``: IEEE arithmetic, only the marked sums are reordered, so results are the
same from run to run and do not depend on the number of threads.

Threads: built with ``-fopenmp``, the library binds to the ``libgomp.so.1`` that PyTorch
has already loaded and uses ``torch.get_num_threads()`` of its threads. A compiler without
OpenMP gives a serial library; the point sets are then split over Python threads (ctypes
releases the GIL).

``similarity.kernels`` chooses: ``auto`` (native where it builds, on CPU tensors; else
PyTorch, with one warning), ``native`` (an error if it cannot be built) or ``torch``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import operator
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).with_name("csrc")
SOURCES = ("tsne.c", "tsne_body.h", "ops.c")
FLAGS = ("-O3", "-fPIC", "-shared", "-std=gnu11", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math")
OPENMP = ("-fopenmp",)        # tried first; a compiler without OpenMP builds the serial library
ABI_VERSION = 7
KERNELS = ("auto", "native", "torch")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_pool: ThreadPoolExecutor | None = None
_warned = False

_f32 = ctypes.POINTER(ctypes.c_float)
_f64 = ctypes.POINTER(ctypes.c_double)
_i64 = ctypes.POINTER(ctypes.c_int64)
_i32 = ctypes.POINTER(ctypes.c_int32)


class NativeUnavailable(RuntimeError):
    """The C kernels could not be compiled or loaded here (the message says why)."""


def _compiler() -> str | None:
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
    cc = _compiler()
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
    lib.ecomp_grams_acts.argtypes = [_i64, _i64, _i32, _i32, ctypes.c_int, _f32, _f64, *span]
    lib.ecomp_grams_acts.restype = ctypes.c_int
    lib.ecomp_recombine.argtypes = [ctypes.c_int64, *[_i64] * 10, ctypes.c_int, ctypes.c_int]
    lib.ecomp_recombine.restype = None
    lib.ecomp_recombine_inplace.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.c_int64, *[_i64] * 4, ctypes.c_int64, _i64, ctypes.c_int,
                                            ctypes.c_int]
    lib.ecomp_recombine_inplace.restype = None
    return lib


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


def resolve(kernels: str, device: torch.device | str = "cpu") -> str:
    """``similarity.kernels`` -> ``native`` or ``torch`` for tensors on ``device``."""
    global _warned
    if kernels not in KERNELS:
        raise ValueError(f"similarity.kernels={kernels!r}: expected one of {', '.join(KERNELS)}")
    if kernels == "torch":
        return "torch"
    on_cpu = torch.device(device).type == "cpu"
    if kernels == "native":
        if not on_cpu:
            raise ValueError(f"similarity.kernels=native: the C kernels run on the CPU, not on {device}; "
                             "use auto or torch")
        load()
        return "native"
    if not on_cpu:
        return "torch"
    if available():
        return "native"
    if not _warned:
        _warned = True
        log.warning("%s; using the PyTorch similarity path (slower, same results within float rounding)", _error)
    return "torch"


def _ptr(t: Tensor | None, kind):
    return None if t is None else ctypes.cast(t.data_ptr(), kind)


def _split(fn, m: int, *args) -> int:
    """``fn(*args, m0, m1, nthreads)`` over ``[0, m)`` with ``torch.get_num_threads()``
    threads: OpenMP's inside the library when it has it, else one Python thread per chunk
    (ctypes releases the GIL)."""
    global _pool
    threads = max(1, min(torch.get_num_threads(), m))
    if _lib is not None and _lib.ecomp_openmp():
        results = [fn(*args, 0, m, threads)]
    elif threads == 1:
        results = [fn(*args, 0, m, 1)]
    else:
        with _lock:
            if _pool is None or _pool._max_workers < threads - 1:
                _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="ecomp-native")
            pool = _pool
        bounds = [m * t // threads for t in range(threads + 1)]
        futures = [pool.submit(fn, *args, bounds[t], bounds[t + 1], 1) for t in range(1, threads)]
        results = [fn(*args, bounds[0], bounds[1], 1)] + [f.result() for f in futures]
    if any(r is not None and r < 0 for r in results):
        raise MemoryError("native similarity kernels: could not allocate scratch memory")
    return sum(r or 0 for r in results)


def _check(name: str, t: Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    if t.device.type != "cpu" or t.dtype != dtype or tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected a CPU {dtype} tensor of shape {shape}, "
                         f"got {t.device.type} {t.dtype} {tuple(t.shape)}")
    return t.contiguous()


def conditionals(gram: Tensor, perplexity: float, tol: float = 1e-5, max_iter: int = 60,
                 guess: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(M, N, N)`` Gram matrices -> ``(M, N, N)`` conditionals (0 on the diagonal) and
    ``beta * mean distance`` ``(M, N)`` of each row; ``guess`` ``(M, N)``: the start, as in
    :func:`ecomp.kernels.tsne_torch.calibrate`."""
    lib = load()
    m, n, _ = gram.shape
    gram = _check("gram", gram, torch.float32, (m, n, n))
    guess = None if guess is None else _check("guess", guess, torch.float64, (m, n))
    cond = torch.empty_like(gram)
    bm = torch.empty(m, n, dtype=torch.float64)
    _split(lib.ecomp_conditionals, m, _ptr(gram, _f32), n, _ptr(guess, _f64), _target(perplexity), tol,
           max_iter, _ptr(cond, _f32), _ptr(bm, _f64))
    return cond, bm


def joint(cond: Tensor) -> Tensor:
    """``(M, N, N)`` conditionals -> joint probabilities, as :func:`ecomp.kernels.tsne_torch.symmetrise`."""
    lib = load()
    m, n, _ = cond.shape
    cond = _check("cond", cond, torch.float32, (m, n, n))
    p = torch.empty_like(cond)
    _split(lib.ecomp_joint, m, _ptr(cond, _f32), n, _ptr(p, _f32))
    return p


def _point_sets(acts: list[Tensor], n: int) -> tuple[int, list[Tensor]]:
    """Describe ``G = rows // n`` sets of ``n`` points in each ``(rows, width)`` activation
    view, in place, set ``s * G + g`` = rows ``[g n, (g + 1) n)`` of ``acts[s]``: the address of
    its first point, the stride between features or points (ld), whether points are
    columns (trans) and the width. Returns the number of sets and those four arrays (int64,
    int64, int32, int32: keep them alive while the C side reads them)."""
    rows = acts[0].shape[0]
    if rows % n:
        raise ValueError(f"acts: {rows} rows are not whole sets of {n} points")
    base, point_step, ld, trans, width = [], [], [], [], []
    for a in acts:                                        # about 200 views per generation: keep this lean
        shape, (s0, s1) = a.shape, a.stride()
        if not a.is_cpu or a.dtype is not torch.float32 or shape[0] != rows:
            raise ValueError(f"acts: expected CPU float32 views of {rows} rows, got {a.device.type} {a.dtype} "
                             f"{tuple(shape)}")
        if s0 == 1 or shape[0] == 1:                      # points are columns of a (width, ld) block
            trans.append(1)
            ld.append(s1 if shape[1] > 1 else rows)
        elif s1 == 1 or shape[1] == 1:                    # points are rows
            trans.append(0)
            ld.append(s0)
        else:
            raise ValueError("acts: each view needs unit stride along points or features")
        base.append(a.data_ptr())
        point_step.append(4 * s0)
        width.append(shape[1])
    g = torch.arange(rows // n, dtype=torch.int64) * n
    addr = (torch.tensor(base)[:, None] + torch.tensor(point_step)[:, None] * g).reshape(-1)
    per = rows // n

    def each(v, dtype):
        return torch.tensor(v, dtype=dtype).repeat_interleave(per)

    return addr.shape[0], [addr, each(ld, torch.int64), each(trans, torch.int32), each(width, torch.int32)]


def _set_pointers(desc: list[Tensor]) -> list:
    return [_ptr(t, _i64 if t.dtype == torch.int64 else _i32) for t in desc]


def similarity_acts(acts: list[Tensor], n: int, parent_p: Tensor, parent: Tensor, perplexity: float,
                    tol: float = 1e-5, max_iter: int = 60, guess: Tensor | None = None) -> Tensor:
    """``KL(P_parent || Q)`` ``(S * G,)`` float64 straight from activations: ``acts`` are ``S``
    views ``(G * n, width)`` (any widths, points along either unit stride), set ``s * G + g``
    is rows ``[g n, (g + 1) n)`` of ``acts[s]``.

    Set ``m`` is compared with ``parent_p[parent[m]]`` (``(Q, n, n)`` joints from
    :func:`joint`) and, if ``guess`` ``(Q, n)`` is given, starts its perplexity search from
    ``guess[parent[m]]``. Gram matrices (as :func:`grams_acts`) and conditionals are made
    per set in the kernel and never written out.
    """
    lib = load()
    m, desc = _point_sets(acts, n)
    q = parent_p.shape[0]
    parent_p = _check("parent_p", parent_p, torch.float32, (q, n, n))
    parent = _check("parent", parent, torch.int64, (m,))
    if m and (int(parent.min()) < 0 or int(parent.max()) >= q):
        raise ValueError(f"parent: indices must lie in [0, {q}), got {int(parent.min())}..{int(parent.max())}")
    guess = None if guess is None else _check("guess", guess, torch.float64, (q, n))
    kl = torch.empty(m, dtype=torch.float64)
    _split(lib.ecomp_similarity_acts, m, *_set_pointers(desc), n, _ptr(parent_p, _f32), _ptr(guess, _f64),
           _ptr(parent, _i64), _target(perplexity), tol, max_iter,
           _ptr(kl, _f64))
    return kl


def grams_acts(acts: list[Tensor], n: int, centre: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Gram matrices ``(S * G, n, n)`` of the point sets of :func:`similarity_acts`, by the
    kernel it uses (so a parent's and an identical child's agree bit for bit). ``centre``: of
    each set's features centred over its ``n`` points (linear CKA's Grams), returned with
    ``n * |mean|^2`` of each set ``(S * G,)`` float64."""
    lib = load()
    m, desc = _point_sets(acts, n)
    g = torch.empty(m, n, n)
    energy = torch.empty(m, dtype=torch.float64) if centre else None
    _split(lib.ecomp_grams_acts, m, *_set_pointers(desc), n, _ptr(g, _f32), _ptr(energy, _f64))
    return (g, energy) if centre else g


def exp_log(x: Tensor) -> tuple[Tensor, Tensor]:
    """The kernels' own ``e^-x`` and ``log x``, elementwise (to test them against libm)."""
    lib = load()
    x = _check("x", x, torch.float32, tuple(x.shape))
    ex, lg = torch.empty_like(x), torch.empty_like(x)
    lib.ecomp_exp_log(_ptr(x, _f32), _ptr(ex, _f32), _ptr(lg, _f32), x.numel())
    return ex, lg


def recombine(child: tuple[Tensor, Tensor], bulk: tuple[Tensor, Tensor], donor: tuple[Tensor, Tensor],
              rows: list[int], cols: list[int], donor_cols: list[int], cuts: list[int],
              stream: bool = False) -> None:
    """One layer of crossover children, in one pass over their memory: child ``j`` (``rows[j]``
    x ``cols[j]`` float32 weights and ``rows[j]`` biases at the addresses ``child[0][j]``,
    ``child[1][j]``) becomes its bulk parent's layer (same shape, at ``bulk[.][j]``) with the
    top-left ``c x c`` block and first ``c`` biases of its donor (row stride ``donor_cols[j]``,
    at ``donor[.][j]``), ``c = cuts[j]``. Addresses are int64 tensors; the caller
    (:mod:`ecomp.core.recombination`) builds them from live CPU tensors and keeps them alive.
    ``stream``: write whole rows with non-temporal stores (for destination memory already
    touched, as the recycled first-layer buffers; see ``ecomp/csrc/ops.c``).
    Threads: ``torch.get_num_threads()`` when the library has OpenMP."""
    lib = load()
    n = len(rows)
    addrs = [*child, *bulk, *donor]
    if (any(a.dtype != torch.int64 or a.shape != (n,) for a in addrs)
            or not len(cols) == len(donor_cols) == len(cuts) == n):
        raise ValueError(f"recombine: expected {n} addresses, shapes and cuts per argument")
    sizes = list(torch.tensor([rows, cols, donor_cols, cuts], dtype=torch.int64))
    if n and (int(sizes[3].min()) < 0 or bool((sizes[3] > torch.minimum(sizes[0], sizes[1])).any())):
        raise ValueError("recombine: every cut must lie in [0, min(rows, cols)] of its child")
    lib.ecomp_recombine(n, *(_ptr(t.contiguous(), _i64) for t in (*addrs, *sizes)), int(stream),
                        torch.get_num_threads() if lib.ecomp_openmp() else 1)


def recombine_inplace(w: Tensor, b: Tensor, slots: list[int], sources: list[int], donors: list[int],
                      cuts: list[int], stream: bool = False) -> None:
    """One layer of crossover children written over their parents' storage, for a population of
    one architecture: ``w`` is ``(slots, rows, cols)`` float32 (contiguous, on the CPU), ``b``
    ``(slots, rows)``. Child ``j`` goes to slot ``slots[j]`` and is the layer at slot
    ``sources[j]`` (its bulk parent) with the top-left ``c x c`` block and first ``c`` biases of
    the layer at slot ``donors[j]``, ``c = cuts[j]``: bit for bit what :func:`recombine` writes
    into separate storage. ``slots`` must be a permutation of the slots, and a child not in place
    (``sources[j] != slots[j]``) must take a slot that is no child's source, so that no copy reads
    what another writes (``ecomp/csrc/ops.c`` orders the rest). ``stream``: as in :func:`recombine`."""
    lib = load()
    n = len(slots)
    try:                                     # plain ints: no float or tensor slips past the set checks
        slots, sources, donors, cuts = ([operator.index(v) for v in seq] for seq in (slots, sources, donors, cuts))
    except TypeError:
        raise ValueError("recombine_inplace: slots, sources, donors and cuts must be integers") from None
    if w.dtype != torch.float32 or b.dtype != torch.float32 or w.dim() != 3 or b.shape != w.shape[:2] \
            or not (w.is_contiguous() and b.is_contiguous()) or w.device.type != "cpu" or b.device.type != "cpu":
        raise ValueError("recombine_inplace: expected contiguous float32 CPU tensors w (slots, rows, cols) "
                         f"and b (slots, rows); got {tuple(w.shape)} {w.dtype} and {tuple(b.shape)} {b.dtype}")
    size, rows, cols = w.shape
    if w.data_ptr() < b.data_ptr() + 4 * b.numel() and b.data_ptr() < w.data_ptr() + 4 * w.numel():
        raise ValueError("recombine_inplace: the weights and biases overlap")
    if not (n == size and len(sources) == len(donors) == len(cuts) == n):
        raise ValueError(f"recombine_inplace: expected {size} slots, sources, donors and cuts")
    if sorted(slots) != list(range(size)):
        raise ValueError(f"recombine_inplace: slots must be a permutation of 0..{size - 1}")
    read = set(sources)
    if any(not 0 <= s < size for s in (*sources, *donors)) \
            or any(s != d and d in read for s, d in zip(sources, slots)):
        raise ValueError("recombine_inplace: a child that is not in place must take a slot no child copies from")
    if any(not 0 <= c <= min(rows, cols) for c in cuts):
        raise ValueError(f"recombine_inplace: every cut must lie in [0, {min(rows, cols)}]")
    sizes = [c * c + c for c in cuts]
    offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)
    scratch = torch.empty(sum(sizes), dtype=torch.float32)
    idx = torch.tensor([slots, sources, donors, cuts], dtype=torch.int64)
    lib.ecomp_recombine_inplace(n, w.data_ptr(), b.data_ptr(), rows, cols, *(_ptr(t, _i64) for t in idx),
                                scratch.data_ptr(), _ptr(offsets, _i64), int(stream),
                                torch.get_num_threads() if lib.ecomp_openmp() else 1)


def _target(perplexity: float) -> float:
    return math.log(perplexity)
