"""Fused C kernels for the similarity, crossover's copies and a convolutional population's
convolution stages (the C library: :mod:`ecomp.kernels.c_library`).

Why: the PyTorch path (:mod:`ecomp.kernels.tsne_torch`) makes a dozen passes over every ``(N, N)``
matrix per perplexity iteration and as many again for the KL, each a separate kernel. The C
kernels do all of it one point set at a time while the set sits in cache: the Gram matrix
straight from the activations, the shifted distances, the Halley search with a vectorised
``exp``, the symmetrised joint and the KL with a vectorised ``log``; and they write each
layer's crossover children in one threaded pass. Whether a run uses them is the
:class:`ecomp.kernels.backend.Backend`'s decision, made once.
"""

from __future__ import annotations

import ctypes
import math
import operator
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from ecomp.kernels.c_library import load

_f32 = ctypes.POINTER(ctypes.c_float)
_f64 = ctypes.POINTER(ctypes.c_double)
_i64 = ctypes.POINTER(ctypes.c_int64)
_i32 = ctypes.POINTER(ctypes.c_int32)


BLAS_GRAM_WIDTH = 1024   # features per point from which a set's Gram is a BLAS product (:func:`is_wide`)


class _Pool:
    """Python threads for a serial library (one built without OpenMP), grown on demand."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None
        self.size = 0

    def get(self, workers: int) -> ThreadPoolExecutor:
        with self.lock:
            if self.executor is None or self.size < workers:
                self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ecomp-native")
                self.size = workers
            return self.executor


_POOL = _Pool()

def _ptr(t: Tensor | None, kind):
    return None if t is None else ctypes.cast(t.data_ptr(), kind)


def _split(fn, m: int, *args, rows: bool = False) -> int:
    """``fn(*args, m0, m1, nthreads)`` over ``[0, m)`` with ``torch.get_num_threads()``
    threads: OpenMP's inside the library when it has it, else one Python thread per chunk
    (ctypes releases the GIL). ``rows``: ``fn`` shares one item's rows among OpenMP's threads."""
    threads = max(1, min(torch.get_num_threads(), m))
    if load().ecomp_openmp():
        results = [fn(*args, 0, m, torch.get_num_threads() if rows else threads)]
    elif threads == 1:
        results = [fn(*args, 0, m, 1)]
    else:
        pool = _POOL.get(threads - 1)
        bounds = [m * t // threads for t in range(threads + 1)]
        futures = [pool.submit(fn, *args, bounds[t], bounds[t + 1], 1) for t in range(1, threads)]
        results = [fn(*args, bounds[0], bounds[1], 1)] + [f.result() for f in futures]
    if any(r is not None and r < 0 for r in results):
        raise MemoryError("native similarity kernels: could not allocate scratch memory")
    return sum(r or 0 for r in results)


def _check(name: str, t: Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> Tensor:
    if not t.is_cpu or t.dtype != dtype or tuple(t.shape) != shape:
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
    parent_p, parent, guess = _parents(parent_p, parent, guess, m, n)
    kl = torch.empty(m, dtype=torch.float64)
    _split(lib.ecomp_similarity_acts, m, *_set_pointers(desc), n, _ptr(parent_p, _f32), _ptr(guess, _f64),
           _ptr(parent, _i64), _target(perplexity), tol, max_iter,
           _ptr(kl, _f64))
    return kl


def _parents(parent_p: Tensor, parent: Tensor, guess: Tensor | None, m: int, n: int) -> tuple:
    """The parents' joints ``(Q, n, n)``, each set's parent index ``(m,)`` and the search starts
    ``(Q, n)``, checked for the kernels."""
    q = parent_p.shape[0]
    parent_p = _check("parent_p", parent_p, torch.float32, (q, n, n))
    parent = _check("parent", parent, torch.int64, (m,))
    if m and (int(parent.min()) < 0 or int(parent.max()) >= q):
        raise ValueError(f"parent: indices must lie in [0, {q}), got {int(parent.min())}..{int(parent.max())}")
    return parent_p, parent, None if guess is None else _check("guess", guess, torch.float64, (q, n))


def similarity_grams(gram: Tensor, p: Tensor, parent: Tensor, perplexity: float, tol: float = 1e-5,
                     max_iter: int = 60, guess: Tensor | None = None) -> Tensor:
    """``KL(P_parent || Q)`` ``(M,)`` float64 of ``M`` point sets given as Gram matrices ``(M, N, N)``
    (for example :func:`blas_grams`'): :func:`similarity_acts` after its Gram step."""
    lib = load()
    m, n, _ = gram.shape
    gram = _check("gram", gram, torch.float32, (m, n, n))
    p, parent, guess = _parents(p, parent, guess, m, n)
    kl = torch.empty(m, dtype=torch.float64)
    _split(lib.ecomp_similarity_grams, m, _ptr(gram, _f32), n, _ptr(p, _f32), _ptr(guess, _f64), _ptr(parent, _i64),
           _target(perplexity), tol, max_iter, _ptr(kl, _f64))
    return kl


def blas_grams(acts: list[Tensor], n: int) -> Tensor:
    """Gram matrices ``(S * G, n, n)`` of the point sets of :func:`similarity_acts` (set ``s * G + g``:
    rows ``[g n, (g + 1) n)`` of ``acts[s]``) by torch's batched GEMM. On the wide feature maps of a
    convolutional network (``BLAS_GRAM_WIDTH`` features and more: LeNet-5's first stage, 1,176) the
    GEMM library's blocking is 1.5x faster than the C kernel's at 1,024 features, 1.7x at 1,176 and
    3.8x at 12,544 (``benchmarks/bench_grams.py``); its sums run in another order, so these Grams
    agree with :func:`grams_acts`' to float rounding, not bit for bit."""
    return torch.cat([torch.bmm(x, x.transpose(1, 2)) for x in (a.unflatten(0, (-1, n)) for a in acts)])


def is_wide(a: Tensor) -> bool:
    """Whether a set of width ``a.shape[1]`` takes its Gram from :func:`blas_grams`. The rule is
    the width alone, so a parent's set and a child's set of the same width take the same path."""
    return a.shape[1] >= BLAS_GRAM_WIDTH


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
              stream: bool = False, cut_cols: list[int] | None = None) -> None:
    """One layer of crossover children, in one pass over their memory: child ``j`` (``rows[j]``
    x ``cols[j]`` float32 weights and ``rows[j]`` biases at the addresses ``child[0][j]``,
    ``child[1][j]``) becomes its bulk parent's layer (same shape, at ``bulk[.][j]``) with the
    top-left ``c x k`` block and first ``c`` biases of its donor (row stride ``donor_cols[j]``,
    at ``donor[.][j]``), ``c = cuts[j]``, ``k = cut_cols[j]`` (None: ``k = c``, an MLP's square
    block). Addresses are int64 tensors; the caller (:mod:`ecomp.core.recombination`) builds
    them from live CPU tensors and keeps them alive.
    ``stream``: write whole rows with non-temporal stores (for destination memory already
    touched, as the recycled first-layer buffers; see ``ecomp/csrc/ops.c``).
    Threads: ``torch.get_num_threads()`` when the library has OpenMP."""
    lib = load()
    n = len(rows)
    addrs = [*child, *bulk, *donor]
    if (any(a.dtype != torch.int64 or a.shape != (n,) for a in addrs)
            or not len(cols) == len(donor_cols) == len(cuts) == n or (cut_cols is not None and len(cut_cols) != n)):
        raise ValueError(f"recombine: expected {n} addresses, shapes and cuts per argument")
    sizes = list(torch.tensor([rows, cols, donor_cols, cuts, cuts if cut_cols is None else cut_cols],
                              dtype=torch.int64))
    if n and (int(sizes[3].min()) < 0 or int(sizes[4].min()) < 0 or bool((sizes[3] > sizes[0]).any())
              or bool((sizes[4] > torch.minimum(sizes[1], sizes[2])).any())
              or (cut_cols is None and bool((sizes[3] > sizes[1]).any()))):
        raise ValueError("recombine: every cut must lie in [0, rows] and every column cut in [0, min(cols, "
                         "donor_cols)] of its child (an MLP's square cut in [0, min(rows, cols)])")
    lib.ecomp_recombine(n, *(_ptr(t.contiguous(), _i64) for t in (*addrs, *sizes)), int(stream),
                        torch.get_num_threads() if lib.ecomp_openmp() else 1)


def gather_runs(dst: Tensor, src: Tensor) -> Tensor:
    """``dst.copy_(src)`` for ``src`` a ``(g, rows, c)`` view whose rows are ``src.stride(1)``
    floats apart, individuals ``c`` floats apart and values contiguous (a channels-last map's
    ``(rows, g * c)`` runs per individual), into a contiguous ``dst`` of that shape: one pass
    in C (``ecomp_gather_runs``), bit for bit torch's copy. Both float32 on the CPU."""
    g, rows, c = src.shape
    if (dst.shape != src.shape or not dst.is_contiguous() or src.dtype != torch.float32
            or dst.dtype != torch.float32 or src.device.type != "cpu" or dst.device.type != "cpu"
            or (g > 1 and src.stride(0) != c) or (c > 1 and src.stride(2) != 1)):
        raise ValueError(f"gather_runs: expected float32 CPU (g, rows, c) views with individuals c apart "
                         f"and a contiguous destination, got {tuple(src.shape)} strides {src.stride()}")
    lib = load()
    lib.ecomp_gather_runs(dst.data_ptr(), src.data_ptr(), rows, src.stride(1), g, c,
                          torch.get_num_threads() if lib.ecomp_openmp() else 1)
    return dst


def conv_block() -> int:
    """Floats per vector of the fused convolution here (:func:`conv_pool`): 16 with AVX-512F, 8
    with AVX2 + FMA, 0 where it has no copy (no such CPU, or the library forced to its baseline
    copy); the caller then takes the PyTorch path."""
    return int(load().ecomp_conv_block())


SUM_ORDERS = {"patches": 0, "pixels": 1}   # (c, ky, kx) as a GEMM on patches sums; (ky, kx, c) as oneDNN
LANES = {"auto": -1, "filters": 0, "images": 1}   # what conv_pool's vectors hold


def conv_filters(w: Tensor, b: Tensor, groups: int = 1, order: str = "patches") -> tuple[Tensor, Tensor]:
    """The filters ``w`` ``(groups * f, C, k, k)`` and biases ``b`` as :func:`conv_pool` reads
    them: ``(groups, C*k*k, fpad)``, row ``k`` each filter's ``k``-th term in ``order``, zero
    columns from ``f`` to a whole number of vectors; and ``(groups, fpad)``. A population
    evaluated on many batches builds them once (:meth:`NetPopulation.joined`)."""
    vw = conv_block() or 1
    f, c, k = w.shape[0] // groups, w.shape[1], w.shape[-1]
    if order not in SUM_ORDERS or w.shape[0] % groups or tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"conv_filters: expected w (g*f, C, k, k), b (g*f,) and order in {sorted(SUM_ORDERS)}; got "
                         f"{tuple(w.shape)}, {tuple(b.shape)}, {order!r}, groups={groups}")
    fpad = -(-f // vw) * vw
    terms = w.reshape(groups, f, c, k, k)
    terms = terms.flatten(2) if order == "patches" else terms.permute(0, 1, 3, 4, 2).flatten(2)   # (g, f, K)
    wt = None
    if vw > 1 and w.dtype == torch.float32 and w.device.type == "cpu":       # tile transposes in C
        terms = terms.contiguous()
        wt = w.new_empty(groups, c * k * k, fpad)
        if load().ecomp_pad_transpose(terms.data_ptr(), groups, f, c * k * k, fpad, wt.data_ptr(),
                                      torch.get_num_threads()) != 0:
            wt = None
    if wt is None:
        wt = w.new_zeros(groups, c * k * k, fpad)
        wt[:, :, :f] = terms.transpose(1, 2)
    bp = b.new_zeros(groups, fpad)
    bp[:, :f] = b.view(groups, f)
    return wt, bp


def conv_lanes(n: int, f: int) -> str:
    """What :func:`conv_pool`'s vectors hold, left to choose (``lanes="auto"``), for ``n`` images
    and groups of ``f`` filters: ``images`` or ``filters`` (``csrc/conv.c``'s ``ecomp_conv_lanes``)."""
    return "images" if load().ecomp_conv_lanes(n, f) == 1 else "filters"


def conv_pool(x: Tensor, w: Tensor, b: Tensor, padding: int, stride: int, pool: int, out: Tensor,
              groups: int = 1, order: str = "patches", filters: tuple[Tensor, Tensor] | None = None,
              lanes: str = "auto") -> bool:
    """A convolution's ``relu(max_pool(conv2d(x, w, b, stride, padding, groups=groups), pool))``
    in one pass (``csrc/conv.c``; a task is a group on a vector's worth of images, or a group's
    filters on one image, see ``lanes``): the pooled maps, without the patches or
    the unpooled output in memory. ``x`` ``(n, groups * C, H, W)`` or ``(groups, n, C, H, W)``
    (any strides), ``w`` ``(groups * f, C, k, k)``, ``b`` ``(groups * f,)``; ``out`` ``(groups, n, H', W', f)``
    with unit stride over ``f`` (a channels-last ``(n, groups * f, H', W')`` map seen as that is
    one). Each dot product is summed in ``order`` with fused multiply-adds: ``patches``
    ``(c, ky, kx)``, ``pixels`` ``(ky, kx, c)`` then the bias (:data:`SUM_ORDERS`).
    ``filters``: ``conv_filters(w, b, groups, order)``, if already built. ``lanes``: what the
    vectors' lanes hold, ``images`` (for groups of a few filters on many images), ``filters``, or
    ``auto`` (whichever fills them better); the same operations per output, so the same bits.
    False (``out`` untouched) where the library has no vector copy here (:func:`conv_block`)."""
    vw = conv_block()
    if vw == 0:
        return False
    if x.dim() == 5:                                                  # (g, n, C, H, W)
        _, n, c, hh, ww = x.shape
        gc, xs = groups * c, (x.stride(1), x.stride(0), *x.stride()[2:])
    else:
        n, gc, hh, ww = x.shape
        xs = (x.stride(0), gc // groups * x.stride(1), *x.stride()[1:])
    k = w.shape[-1]
    c, f = gc // groups, w.shape[0] // groups
    pooled = tuple(((d + 2 * padding - k) // stride + 1) // max(pool, 1) for d in (hh, ww))
    if ((x.dim() == 5 and x.shape[0] != groups) or gc % groups or w.shape[0] % groups or tuple(w.shape[1:]) != (c, k, k)
            or tuple(b.shape) != (groups * f,)
            or tuple(out.shape) != (groups, n, *pooled, f) or (f > 1 and out.stride(4) != 1)
            or pool < 1 or stride < 1 or padding < 0 or order not in SUM_ORDERS or lanes not in LANES
            or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (x, w, b, out))):
        raise ValueError(f"conv_pool: expected float32 CPU x (n, g*C, H, W), w (g*f, C, k, k), b (g*f,), out "
                         f"(g, n, H', W', f) with unit stride over f, order in "
                         f"{sorted(SUM_ORDERS)} and lanes in {sorted(LANES)}; got {tuple(x.shape)}, {tuple(w.shape)}, "
                         f"{tuple(b.shape)}, {tuple(out.shape)}, {order!r}, {lanes!r}, groups={groups}")
    wt, bp = filters if filters is not None else conv_filters(w, b, groups, order)
    if wt.shape[:2] != (groups, c * k * k) or wt.shape[2] % vw or wt.shape[2] < f or bp.shape != (groups, wt.shape[2]):
        raise ValueError(f"conv_pool: filters {tuple(wt.shape)}, {tuple(bp.shape)} are not conv_filters' of w, b")
    xs = (ctypes.c_int64 * 5)(*xs)
    os_ = (ctypes.c_int64 * 4)(*out.stride()[:4])
    lib = load()
    done = lib.ecomp_conv_pool(x.data_ptr(), xs, n, groups, c, hh, ww, wt.data_ptr(), bp.data_ptr(), f, wt.shape[2],
                               k, padding, stride, pool, SUM_ORDERS[order], out.data_ptr(), os_, LANES[lanes],
                               torch.get_num_threads() if lib.ecomp_openmp() else 1)
    return done == 0


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
            or not (w.is_contiguous() and b.is_contiguous()) or not (w.is_cpu and b.is_cpu):
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
