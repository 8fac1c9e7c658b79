"""Single-cut, layer-wise crossover that inherits the parents' weights.

For a layer with weights ``W1`` (parent 1) and ``W2`` (parent 2) and a cut
``c``, child 1 is ``W2`` with its top-left ``c x c`` block taken from ``W1``
(rows ``[:c]`` = ``W1[:c, :c] ++ W2[:c, c:]``, then ``W2[c:]``) and child 2 is
the mirror image; biases follow the rows (``b1[:c] ++ b2[c:]``). So child 1
has parent 2's shape and child 2 has parent 1's. The cut is drawn uniformly
from ``[1, min(both parents' in and out sizes)]`` (inclusive), independently
per layer and per pair.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import native
from .population import Population


def draw_cuts(pop: Population, pairs: Tensor, generator: torch.Generator) -> Tensor:
    """``(n_pairs, n_layers)`` cut points, each uniform on ``[1, limit]``."""
    n_layers = len(pop.widths[0]) + 1
    in_dim = pop.first_w.shape[1]
    classes = pop.rest[0][-1][0].shape[0]
    limits = []
    for a, b in pairs.tolist():
        dims_a = (in_dim, *pop.widths[a], classes)
        dims_b = (in_dim, *pop.widths[b], classes)
        limits.append([min(dims_a[l], dims_a[l + 1], dims_b[l], dims_b[l + 1]) for l in range(n_layers)])
    lim = torch.tensor(limits, dtype=torch.float64)                       # (n_pairs, n_layers)
    u = torch.rand(lim.shape, generator=generator, dtype=torch.float64)
    return (1 + (u * lim).floor()).clamp_(max=lim).to(torch.int64)


def _swap_block(dst_w: Tensor, dst_b: Tensor, src_w: Tensor, src_b: Tensor, c: int) -> None:
    dst_w[:c, :c] = src_w[:c, :c]
    dst_b[:c] = src_b[:c]


@torch.no_grad()
def recombine(pop: Population, pairs: Tensor, generator: torch.Generator,
              out: Tensor | None = None, use_native: bool | None = None) -> Population:
    """Two children per pair; the result has ``2 * len(pairs)`` individuals.

    Children ``2k`` and ``2k + 1`` come from pair ``k``. The parents' tensors
    are never modified. ``out``, if given, is storage of at least the children's
    first-layer rows that must not overlap the parents' (the loop passes a
    recycled buffer: writing into touched memory is about 3x faster than
    into a fresh 40 MB allocation, which glibc always maps anew).

    The block swaps and the later layers' copies are a few hundred small tensor
    operations per generation; ``ecomp.native.crossover`` does each layer's in one
    call (``use_native``: None = when the C kernels are available and the population is
    float32 on the CPU). Both paths only copy, so their children are bit for bit equal.
    """
    if use_native is None:
        use_native = (pop.device.type == "cpu" and pop.first_w.dtype == torch.float32
                      and native.available())
    cuts = draw_cuts(pop, pairs, generator).tolist()
    pl = pairs.tolist()
    # child 2k copies parent b, child 2k + 1 copies parent a; the block comes from the other one
    bulk = [i for a, b in pl for i in (b, a)]
    donor = [i for a, b in pl for i in (a, b)]
    child_cuts = [c for c in cuts for _ in (0, 1)]

    # First layer: gather the bulk parents' packed rows in one index_select into the recycled
    # buffer (benchmarks/bench_kernels.py: faster than a copy per parent), then swap the blocks.
    widths = [pop.widths[s] for s in bulk]
    heights = torch.tensor([w[0] for w in widths])
    n_rows = int(heights.sum())
    starts = torch.tensor(pop.offsets[:-1])[torch.tensor(bulk)]               # each bulk parent's first row
    dst_starts = torch.cumsum(heights, 0) - heights
    rows = torch.arange(n_rows) + torch.repeat_interleave(starts - dst_starts, heights)
    rows = rows.to(pop.first_w.device)
    shape = (n_rows, pop.first_w.shape[1])
    first_w = out[:n_rows] if out is not None and out.shape[0] >= n_rows else pop.first_w.new_empty(shape)
    torch.index_select(pop.first_w, 0, rows, out=first_w)
    first_b = pop.first_b.index_select(0, rows)
    children = Population(widths, first_w, first_b, rest=[])
    if use_native:
        native.crossover([children.first(j) for j in range(len(bulk))], None, [pop.first(d) for d in donor],
                         [c[0] for c in child_cuts])
        _later_layers_native(pop, children, bulk, donor, child_cuts)
        return children
    for j, (d, c) in enumerate(zip(donor, child_cuts)):
        w, b = children.first(j)
        dw, db = pop.first(d)
        _swap_block(w, b, dw, db, c[0])

    # Later layers: copy the bulk parent's tensors, swap the block from the donor.
    for j, (s, d, c) in enumerate(zip(bulk, donor, child_cuts)):
        layers = []
        for l, ((w, b), (dw, db)) in enumerate(zip(pop.rest[s], pop.rest[d])):
            w, b = w.clone(), b.clone()
            _swap_block(w, b, dw, db, c[l + 1])
            layers.append((w, b))
        children.rest.append(layers)
    return children


def _later_layers_native(pop: Population, children: Population, bulk: list[int], donor: list[int],
                         child_cuts: list[list[int]]) -> None:
    """The children's later layers as views into one weight and one bias buffer per layer,
    filled by one :func:`ecomp.native.crossover` call per layer."""
    layers: list[list[tuple[Tensor, Tensor]]] = [[] for _ in bulk]
    for l in range(len(pop.rest[0])):
        src = [pop.rest[s][l] for s in bulk]
        shapes = [tuple(w.shape) for w, _ in src]
        w_all = src[0][0].new_empty(sum(r * c for r, c in shapes))
        b_all = src[0][1].new_empty(sum(r for r, _ in shapes))
        ws = [v.view(shape) for v, shape in zip(torch.split(w_all, [r * c for r, c in shapes]), shapes)]
        bs = torch.split(b_all, [r for r, _ in shapes])
        native.crossover(list(zip(ws, bs)), src, [pop.rest[d][l] for d in donor], [c[l + 1] for c in child_cuts])
        for j in range(len(bulk)):
            layers[j].append((ws[j], bs[j]))
    children.rest.extend(layers)
