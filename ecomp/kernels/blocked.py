"""Products summed in the order of the GEMM library they replace (``csrc/blocked.c``, through
:mod:`ecomp.kernels.native`'s loader): the similarity's Gram matrices of wide point sets (the upper
triangle only, mirrored) and a convolutional population's linear stages (bias, product and ReLU in
one pass).

The library's order is not assumed: for each shape, :func:`gram_block` and :func:`linear_block`
compare the kernel with the library bit for bit on random operands, block size by block size,
once per process; a shape where none reproduces it keeps the library's product. So a run's
numbers are the library's, with these kernels or without them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ecomp.kernels import native
from ecomp.kernels.native import _f32, _point_sets, _ptr, _set_pointers, _split, conv_block, conv_filters, load


def grams(acts: list[Tensor], n: int) -> Tensor:
    """Gram matrices ``(S * G, n, n)`` of every set (:func:`~ecomp.kernels.native.similarity_acts`'
    sets), each by the path its width picks (:func:`~ecomp.kernels.native.is_wide`)."""
    out = [wide_grams([a], n) if native.is_wide(a) else native.grams_acts([a], n) for a in acts]
    return torch.cat(out) if out else torch.empty(0, n, n)


def wide_grams(acts: list[Tensor], n: int) -> Tensor:
    """The GEMM library's Gram matrices (:func:`~ecomp.kernels.native.blas_grams`), bit for bit, in
    about half its time: the sets of each activation whose width the C kernel sums in the
    library's order (:func:`gram_block`) come from it (the upper triangle only, mirrored), the
    others from the library."""
    if not acts:
        return torch.empty(0, n, n)
    m, (addr, ld, trans, width) = _point_sets(acts, n)
    per = m // len(acts)                                # sets per activation: each takes one path
    kb = torch.tensor([gram_block(n, a.shape[1]) for a in acts], dtype=torch.int64).repeat_interleave(per)
    kb[trans != 0] = 0                                  # points as columns: the library's product
    rest = [s for s in range(len(acts)) if not kb[s * per]]
    if len(rest) == len(acts):
        return native.blas_grams(acts, n)
    g = torch.empty(m, n, n)
    if not rest:
        _gram_blocked([addr, ld, width, kb], n, g)
        return g
    ours = kb.nonzero().view(-1)
    part = torch.empty(len(ours), n, n)
    _gram_blocked([addr[ours], ld[ours], width[ours], kb[ours]], n, part)
    g[ours] = part
    g.view(len(acts), per, n, n)[rest] = native.blas_grams([acts[s] for s in rest], n).view(len(rest), per, n, n)
    return g


def gram_blocked(acts: list[Tensor], n: int, block: int) -> Tensor:
    """The C kernel's Gram matrices ``(S * G, n, n)`` of the point sets of
    :func:`~ecomp.kernels.native.similarity_acts` (points as rows of unit-stride features), each
    entry summed in blocks of ``block`` terms (see ``csrc/blocked.c``); a one-line
    :class:`ValueError` where the kernel has no copy here."""
    m, (addr, ld, trans, width) = _point_sets(acts, n)
    if conv_block() == 0 or bool((trans != 0).any()) or block < 1:
        raise ValueError(f"gram_blocked: needs a vector copy here (has {conv_block()} floats), points as rows "
                         f"and block >= 1 (got {block})")
    g = torch.empty(m, n, n)
    _gram_blocked([addr, ld, width, torch.full((m,), block, dtype=torch.int64)], n, g)
    return g


def _gram_blocked(desc: list[Tensor], n: int, out: Tensor) -> None:
    """``ecomp_gram_blocked`` of the sets ``desc`` (addresses, lds, widths, blocks) into ``out``."""
    _split(load().ecomp_gram_blocked, out.shape[0], *_set_pointers(desc), n, _ptr(out, _f32))


_BLOCKS = (192, 256, 128, 384, 512, 96, 64, 320, 160, 224, 288, 448, 32)


def _blocks(k: int) -> list[int]:
    """The blocks :func:`gram_block` and :func:`linear_block` try for ``k`` terms, likeliest first:
    MKL on the CPUs measured sums in blocks of 192, or of ``k // 2`` where ``192 < k <= 384``;
    ``k`` itself is one block (a plain sum in order)."""
    return list(dict.fromkeys([b for b in (192, k // 2, *_BLOCKS) if 0 < b < k] + [k]))


_gram_block: dict[tuple[int, int, int], int] = {}


def gram_block(n: int, width: int) -> int:
    """The block of terms in which the GEMM library sums a Gram entry of ``n`` points of ``width``
    features on this machine (each block in order, one rounding per term, then the blocks' sums in
    order), found once per shape by comparing the library's Grams with the C kernel's for each
    candidate on random sets: 0 where none reproduces it bit for bit (another order, a small-matrix
    path), or where the kernel has no vector copy here (:func:`conv_block`)."""
    key = (n, width, torch.get_num_threads())
    if key not in _gram_block:
        found = 0
        if conv_block() > 0 and width > 0 and n > 0:
            gen = torch.Generator().manual_seed(width)
            a = torch.randn(4 * n, width, generator=gen).relu_()
            want = native.blas_grams([a], n)
            for kb in _blocks(width):
                if torch.equal(gram_blocked([a], n, kb), want):
                    found = kb
                    break
        _gram_block[key] = found
    return _gram_block[key]


def linear_blocked(h: Tensor, w: Tensor, b: Tensor, block: int, relu: bool = False,
                   filters: tuple[Tensor, Tensor] | None = None, terms: Tensor | None = None) -> Tensor:
    """``torch.baddbmm(b, h, w^T)`` (then the ReLU where ``relu``) by the C kernel (``csrc/blocked.c``):
    each individual's rows ``h`` ``(g, n, K)`` (unit stride along K) times its weights ``w``
    ``(g, f, K)`` plus its biases ``b`` ``(g, f)``, each sum added to the bias in blocks of
    ``block`` terms; ``(g, n, f)``. ``filters``: :func:`~ecomp.kernels.native.conv_filters` of the
    weights as ``(g * f, K, 1, 1)`` filters, if already built. ``terms`` (int32, ``K``): the
    product of ``h[..., terms]`` instead, read where it is (a channels-last map as the flattening of
    its channels-first view). A one-line :class:`ValueError` for other layouts or where the kernel
    has no copy here."""
    g, n, k = h.shape
    f = w.shape[1]
    if (conv_block() == 0 or block < 1 or h.stride(2) != 1 or tuple(w.shape) != (g, f, k) or tuple(b.shape) != (g, f)
            or {h.dtype, w.dtype, b.dtype} != {torch.float32} or h.device.type != "cpu"
            or (terms is not None and (terms.dtype != torch.int32 or tuple(terms.shape) != (k,) or k == 0
                                       or terms.device.type != "cpu" or not terms.is_contiguous()
                                       or int(terms.min()) < 0 or int(terms.max()) >= k))):
        raise ValueError(f"linear_blocked: needs a vector copy here (has {conv_block()} floats), float32 CPU "
                         f"h (g, n, K) with unit stride along K, w (g, f, K) and b (g, f), block >= 1, terms "
                         f"int32 CPU (K,) in [0, K); got {tuple(h.shape)} strides {h.stride()}, {tuple(w.shape)}, "
                         f"{tuple(b.shape)}, {block}, terms {None if terms is None else tuple(terms.shape)}")
    wt, bp = filters if filters is not None else conv_filters(w.reshape(g * f, k, 1, 1), b.reshape(-1), g)
    out = h.new_empty(g, n, f)
    _split(load().ecomp_linear_blocked, g, h.data_ptr(), h.stride(0), h.stride(1), n, k,
           0 if terms is None else terms.data_ptr(), wt.data_ptr(), bp.data_ptr(), f, wt.shape[-1], block, int(relu),
           out.data_ptr(), rows=True)
    return out


_linear_block: dict[tuple[int, int, int, int], int] = {}


def linear_block(n: int, k: int, f: int) -> int:
    """As :func:`gram_block`, for a linear stage of ``n`` rows, ``k`` inputs and ``f`` outputs
    against ``torch.baddbmm`` (:func:`linear_blocked`): the block found, or 0."""
    key = (n, k, f, torch.get_num_threads())
    if key not in _linear_block:
        found = 0
        if conv_block() > 0 and min(n, k, f) > 0:
            gen = torch.Generator().manual_seed(k * 1000 + f)
            h = torch.randn(2, n, k, generator=gen).relu_()
            w, b = torch.randn(2, f, k, generator=gen), torch.randn(2, f, generator=gen)
            want = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            for kb in _blocks(k):
                if torch.equal(linear_blocked(h, w, b, kb), want):
                    found = kb
                    break
        _linear_block[key] = found
    return _linear_block[key]
