"""Single-cut, layer-wise crossover that inherits the parents' weights, on units of any layer kind.

For a layer with weights ``W1`` (parent 1) and ``W2`` (parent 2) and a cut
``c``, child 1 is ``W2`` with its block of the first ``c`` output units by the first ``c``
input units taken from ``W1`` (rows ``[:c]`` = ``W1[:c, :c] ++ W2[:c, c:]``, then ``W2[c:]``)
and child 2 is the mirror image; biases follow the rows (``b1[:c] ++ b2[c:]``). So child 1
has parent 2's shape and child 2 has parent 1's. Rows are output units; a unit's inputs are
what :meth:`ecomp.nets.structure.Structure.crossover_blocks` says (a neuron's column, a
convolution's input channels, a channel's ``height x width`` block of columns after the
Flatten). The cut is drawn uniformly from ``[1, limit]`` (inclusive), independently per
layer and per pair; ``limit`` is the smallest of both parents' output units and input units,
the first layer's input counted in image features (``C x H x W``, 784 for FashionMNIST): on an
MLP exactly the paper's bound, and a first convolution on grey images is not capped at 1.

On a residual network the cut is per channel group (:mod:`ecomp.nets.resnet`), at most both
parents' widths of the group, and the same rule reads: a weight is the donor's when the units it
joins are the donor's, the first ``cut`` of the group a layer writes and of the group it reads
(the image's channels and the classes count as both parents'). Every layer that writes or reads
a group sees the same cut, so the child's channels stay consistent across the additions.

A packed population (:class:`ecomp.nets.population.Population`, the MLP's) is crossed over by
the fast paths below; a population of one network per individual by :func:`recombine_networks`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ecomp.kernels import native
from ecomp.kernels.backend import Backend, for_tensor
from ecomp.nets.population import Population


def draw_cuts(pop, pairs: Tensor, generator: torch.Generator) -> Tensor:
    """``(n_pairs, n_layers)`` cut points of a packed population (an MLP's), each uniform on ``[1, limit]``."""
    n_layers = len(pop.widths[0]) + 1
    in_dim = pop.in_features
    classes = pop.classes
    limits = []
    for a, b in pairs.tolist():
        dims_a = (in_dim, *pop.widths[a], classes)
        dims_b = (in_dim, *pop.widths[b], classes)
        limits.append([min(dims_a[l], dims_a[l + 1], dims_b[l], dims_b[l + 1]) for l in range(n_layers)])
    return _draw(limits, generator)


def _draw(limits: list[list[int]], generator: torch.Generator) -> Tensor:
    """One cut per limit, uniform on ``[1, limit]``."""
    lim = torch.tensor(limits, dtype=torch.float64)                       # (n_pairs, n_cuts)
    u = torch.rand(lim.shape, generator=generator, dtype=torch.float64)
    return (1 + (u * lim).floor()).clamp_(max=lim).to(torch.int64)


@torch.no_grad()
def recombine_networks(pop, pairs: Tensor, generator: torch.Generator, use_native: bool | None = None,
                       backend: Backend | None = None):
    """Crossover of a population stored one network per individual (``pop.members``): two
    children per pair (``2k`` from pair ``k``'s second parent with the first's block, ``2k + 1``
    the mirror), fresh tensors; the parents are not modified. The cut points and each layer's
    block are the kind's (:meth:`ecomp.nets.structure.Structure.cut_limits`,
    :meth:`~ecomp.nets.structure.Structure.crossover_blocks`): one cut per layer on a chain,
    one per channel group on a residual network.

    ``use_native`` (None: where ``backend``, else the weights' device's default one, has the
    native copies and the weights are float32): each layer's children in one call of the C library
    (:func:`ecomp.kernels.native.recombine`), written into one buffer per layer that the
    children's tensors are views of; else a copy and a block assignment per child and layer,
    a thousand tensor operations a generation on a population of 100. Both only copy: the
    children are the same, bit for bit."""
    pl = pairs.tolist()
    # the limits and blocks depend on the architectures only: one network object per architecture
    widths = pop.widths
    nets = {}
    for pair in pl:
        for i in pair:
            if widths[i] not in nets:
                nets[widths[i]] = pop.network(i)
    limits: dict[tuple, list[int]] = {}
    for a, b in pl:
        if (widths[a], widths[b]) not in limits:
            limits[widths[a], widths[b]] = nets[widths[a]].cut_limits(nets[widths[b]])
    cuts = _draw([limits[widths[a], widths[b]] for a, b in pl], generator).tolist()
    bulk = [i for a, b in pl for i in (b, a)]
    donor = [i for a, b in pl for i in (a, b)]
    blocks = [nets[widths[s]].crossover_blocks(c) for s, c in zip(bulk, (c for c in cuts for _ in (0, 1)))]
    first = pop.members[0][0][0]
    if use_native is None:
        use_native = first.dtype == torch.float32 and (backend or for_tensor(first)).native_copies
    if use_native and (first.dtype != torch.float32 or first.device.type != "cpu"):
        raise ValueError(f"recombine_networks: the native copies take float32 CPU weights, not "
                         f"{first.dtype} on {first.device.type}")
    if use_native:
        return pop.with_members(_networks_native(pop, bulk, donor, blocks), [widths[s] for s in bulk])
    children = []
    for s, d, layer_blocks in zip(bulk, donor, blocks):
        child = []
        for (rows, cols), (w, bias), (dw, db) in zip(layer_blocks, pop.members[s], pop.members[d]):
            w, bias = w.clone(), bias.clone()
            w[:rows, :cols] = dw[:rows, :cols]
            bias[:rows] = db[:rows]
            child.append((w, bias))
        children.append(child)
    return pop.with_members(children, [widths[s] for s in bulk])


def _networks_native(pop, bulk: list[int], donor: list[int], blocks: list[list[tuple[int, int]]]) -> list:
    """:func:`recombine_networks`' children by the C library: per layer, the children's weights
    and biases are consecutive slices of one new buffer each; a block of ``rows`` outputs by
    ``cols`` inputs is ``rows`` x ``cols * span`` of the weights seen as ``(outputs, rest)``
    (``span`` the columns one input feeds, ``k * k`` for a convolution's filters)."""
    children: list[list] = [[] for _ in bulk]
    for l in range(len(pop.members[0])):
        ws = [pop.members[s][l] for s in bulk]
        ds = [pop.members[d][l] for d in donor]
        for w, _ in (*ws, *ds):         # biases are whole vectors; dtype and device are the population's
            if not w.is_contiguous():
                raise ValueError("recombine_networks: the native copies need contiguous weights")
        shapes = [w.shape for w, _ in ws]
        numel = [w.numel() for w, _ in ws]
        rows = [sh[0] for sh in shapes]
        cols = [m // r for m, r in zip(numel, rows)]                          # the 2-D view's row length
        cut_rows = [b[l][0] for b in blocks]
        cut_cols = [b[l][1] * (c // sh[1]) for b, c, sh in zip(blocks, cols, shapes)]
        flat_w, flat_b = ws[0][0].new_empty(sum(numel)), ws[0][1].new_empty(sum(rows))
        child_w, child_b = flat_w.split(numel), flat_b.split(rows)

        def addresses(ts):
            return torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64)

        native.recombine((addresses(child_w), addresses(child_b)),
                         (addresses([w for w, _ in ws]), addresses([b for _, b in ws])),
                         (addresses([w for w, _ in ds]), addresses([b for _, b in ds])),
                         rows, cols, [w[0].numel() for w, _ in ds], cut_rows, cut_cols=cut_cols)
        for child, w, b, sh in zip(children, child_w, child_b, shapes):
            child.append((w.view(sh), b))
    return children


def _swap_block(dst_w: Tensor, dst_b: Tensor, src_w: Tensor, src_b: Tensor, c: int) -> None:
    dst_w[:c, :c] = src_w[:c, :c]
    dst_b[:c] = src_b[:c]


@torch.no_grad()
def recombine(pop: Population, pairs: Tensor, generator: torch.Generator,
              out: Tensor | None = None, use_native: bool | None = None, in_place: bool = False,
              layers_out: list[tuple[Tensor, Tensor]] | None = None, use_gather: bool | None = None,
              backend: Backend | None = None) -> Population:
    """Two children per pair; the result has ``2 * len(pairs)`` individuals.

    Children ``2k`` and ``2k + 1`` come from pair ``k``. The parents' tensors
    are not modified unless ``in_place``. ``out``, if given, is storage of at least
    the children's first-layer rows that must not overlap the parents' (the loop
    passes a recycled buffer: memory already touched is not page-faulted in again, as a fresh
    allocation above glibc's mmap threshold is). ``layers_out``, if given, does the same for
    the later layers: one ``(weights, biases)`` pair of flat buffers per later layer; a pair too
    small, or sharing storage with the parents' layer, is not used.

    ``in_place``: the children may take over the parents' storage, which is what
    :class:`ecomp.core.evolution.EComp` does once the population has one architecture and the
    backend has the native copies. Each parent's slot then goes to the first child that has it
    as bulk parent, which needs only its donor block written; the children of parents picked
    more than once are copied into the slots of parents no child has as bulk (see
    :func:`ecomp.kernels.native.recombine_inplace`), so most bytes stay where they are. The
    children are the same, individual for
    individual; they are stored out of order (``Population.slots``), and ``pop`` is
    retired: using it afterwards raises. Where in place cannot apply (several
    architectures, no native kernels, not a CPU float32 population) this argument is
    ignored and the parents are left intact.

    ``ecomp.kernels.native.recombine`` writes each layer's children in one threaded pass over
    their memory (``use_native``: None = when the backend has the native copies and the
    population is float32); the fallback copies each bulk parent's layer and
    then assigns the donor's block, a few hundred tensor operations per generation. Off the
    CPU (``use_gather``: None = on a GPU) there is no per-individual loop: each layer is one
    gather through an index tensor built for the whole generation (:func:`_recombine_gather`).
    All of them only copy, so their children are bit for bit equal.
    """
    if not pop.packed:
        return recombine_networks(pop, pairs, generator, use_native, backend)
    pop.check_live()
    backend = backend or for_tensor(pop.first_w)
    if use_native is None:
        use_native = backend.native_copies and pop.first_w.dtype == torch.float32
    cuts = draw_cuts(pop, pairs, generator).tolist()
    pl = pairs.tolist()
    # child 2k copies parent b, child 2k + 1 copies parent a; the block comes from the other one
    bulk = [i for a, b in pl for i in (b, a)]
    donor = [i for a, b in pl for i in (a, b)]
    child_cuts = [c for c in cuts for _ in (0, 1)]

    if in_place and use_native and len(bulk) == pop.size and pop.uniform:
        return _recombine_in_place(pop, bulk, donor, child_cuts)

    widths = [pop.widths[s] for s in bulk]
    n_rows = sum(w[0] for w in widths)
    shape = (n_rows, pop.first_w.shape[1])
    first_w = out[:n_rows] if out is not None and out.shape[0] >= n_rows else pop.first_w.new_empty(shape)
    # each later layer's total weights and biases: the bulk parents' sizes
    layer_sizes = [(sum(wo[s + 1] - wo[s] for s in bulk), sum(bo[s + 1] - bo[s] for s in bulk))
                   for wo, bo in zip(pop.w_offsets, pop.b_offsets)]
    children = Population(widths, first_w, pop.first_b.new_empty(n_rows),
                          layer_w=[_flat(pop.layer_w[l], nw, layers_out, l, 0)
                                   for l, (nw, _) in enumerate(layer_sizes)],
                          layer_b=[_flat(pop.layer_b[l], nb, layers_out, l, 1)
                                   for l, (_, nb) in enumerate(layer_sizes)])
    if use_native:
        recycled = out is not None and first_w.data_ptr() == out.data_ptr()
        _recombine_native(pop, children, bulk, donor, child_cuts, recycled)
        return children
    if use_gather if use_gather is not None else backend.gathered:
        _recombine_gather(pop, children, bulk, donor, child_cuts)
        return children

    # First layer: gather the bulk parents' packed rows in one index_select, then swap the blocks.
    heights = torch.tensor([w[0] for w in widths])
    starts = torch.tensor([pop.offsets[pop.slot(s)] for s in bulk])          # each bulk parent's first row
    rows = torch.arange(n_rows) + torch.repeat_interleave(starts - (torch.cumsum(heights, 0) - heights), heights)
    rows = rows.to(pop.first_w.device)
    torch.index_select(pop.first_w, 0, rows, out=first_w)
    torch.index_select(pop.first_b, 0, rows, out=children.first_b)
    for j, (d, c) in enumerate(zip(donor, child_cuts)):
        w, b = children.first(j)
        dw, db = pop.first(d)
        _swap_block(w, b, dw, db, c[0])
    # Later layers: copy the bulk parent's tensors, swap the block from the donor.
    for j, (s, d, c) in enumerate(zip(bulk, donor, child_cuts)):
        for l, ((w, b), (sw, sb), (dw, db)) in enumerate(zip(children.rest[j], pop.rest[s], pop.rest[d])):
            w.copy_(sw)
            b.copy_(sb)
            _swap_block(w, b, dw, db, c[l + 1])
    return children


def _flat(parent: Tensor, n: int, layers_out: list[tuple[Tensor, Tensor]] | None, l: int, k: int) -> Tensor:
    """``n`` elements for a child layer: from ``layers_out[l][k]`` when it is large enough and not
    the parents' storage, else fresh."""
    if layers_out is not None and l < len(layers_out):
        buf = layers_out[l][k]
        if (buf.numel() >= n and buf.dtype == parent.dtype and buf.device == parent.device
                and buf.untyped_storage().data_ptr() != parent.untyped_storage().data_ptr()):
            return buf[:n]
    return parent.new_empty(n)


def _gather_index(sizes: Tensor, ins: Tensor, bulk_at: Tensor, donor_at: Tensor, donor_ins: Tensor,
                  cuts: Tensor, total: int) -> Tensor:
    """Flat source index of every element of a layer's children, in one set of tensor operations
    (no per-child loop, no host synchronisation): child ``j`` has ``sizes[j]`` elements, rows of
    ``ins[j]``; element ``k`` (row ``r``, column ``c``) comes from the donor's ``r * donor_ins[j] + c``
    past ``donor_at[j]`` inside the ``cuts[j] x cuts[j]`` block, else from the bulk parent's ``k``
    past ``bulk_at[j]``."""
    dev = sizes.device
    j = torch.repeat_interleave(torch.arange(sizes.shape[0], device=dev), sizes, output_size=total)
    k = torch.arange(total, device=dev) - (torch.cumsum(sizes, 0) - sizes)[j]
    inj = ins[j]
    row = torch.div(k, inj, rounding_mode="floor")
    col = k - row * inj
    c = cuts[j]
    return torch.where((row < c) & (col < c), donor_at[j] + row * donor_ins[j] + col, bulk_at[j] + k)


def _recombine_gather(pop: Population, children: Population, bulk: list[int], donor: list[int],
                      child_cuts: list[list[int]]) -> None:
    """Every layer of ``children`` as one ``index_select`` of the parents' packed layer (and one of
    its biases) through :func:`_gather_index`: the GPU path. The first layer gathers whole rows
    and takes the donor's block columns by a mask, so its index is per row, not per weight."""
    dev = pop.device

    def t(v: list[int]) -> Tensor:
        return torch.tensor(v, dtype=torch.int64, device=dev)

    bs, ds = [pop.slot(s) for s in bulk], [pop.slot(d) for d in donor]
    n, inp = len(bulk), pop.first_w.shape[1]
    heights = [w[0] for w in children.widths]
    ones, cuts0 = t([1] * n), t([c[0] for c in child_cuts])
    n_rows = children.first_w.shape[0]
    # first layer: rows (index per row), then the donor's columns [0, cut) on its rows [0, cut)
    rows_bulk = _gather_index(t(heights), ones, t([pop.offsets[s] for s in bs]), t([pop.offsets[s] for s in bs]),
                              ones, torch.zeros_like(cuts0), n_rows)
    rows_donor = _gather_index(t(heights), ones, t([pop.offsets[s] for s in bs]), t([pop.offsets[d] for d in ds]),
                               ones, cuts0, n_rows)
    j = torch.repeat_interleave(torch.arange(n, device=dev), t(heights), output_size=n_rows)
    # rows of the donor's block (a pair of one individual with itself has no visible block: either is right)
    cut_of_row = torch.where(rows_donor != rows_bulk, cuts0[j], 0)
    torch.index_select(pop.first_w, 0, rows_bulk, out=children.first_w)
    mask = torch.arange(inp, device=dev).unsqueeze(0) < cut_of_row.unsqueeze(1)
    torch.where(mask, pop.first_w.index_select(0, rows_donor), children.first_w, out=children.first_w)
    torch.index_select(pop.first_b, 0, rows_donor, out=children.first_b)
    for l in range(len(pop.layer_w)):
        wo, bo = pop.w_offsets[l], pop.b_offsets[l]
        outs = t([bo[s + 1] - bo[s] for s in bs])
        ins = t([pop.widths[s][l] for s in bulk])
        cuts = t([c[l + 1] for c in child_cuts])
        idx = _gather_index(outs * ins, ins, t([wo[s] for s in bs]), t([wo[d] for d in ds]),
                            t([pop.widths[d][l] for d in donor]), cuts, children.layer_w[l].numel())
        torch.index_select(pop.layer_w[l], 0, idx, out=children.layer_w[l])
        idx = _gather_index(outs, ones, t([bo[s] for s in bs]), t([bo[d] for d in ds]), ones, cuts,
                            children.layer_b[l].numel())
        torch.index_select(pop.layer_b[l], 0, idx, out=children.layer_b[l])


def _recombine_native(pop: Population, children: Population, bulk: list[int], donor: list[int],
                      child_cuts: list[list[int]], recycled: bool) -> None:
    """Every layer of ``children`` by :func:`ecomp.kernels.native.recombine`, one call per layer, with
    the addresses computed from the packed buffers' offsets. ``recycled``: the first layer goes
    into a buffer already touched (streaming stores pay off there)."""
    def addresses(tensors: list[Tensor], starts: list[list[int]], steps: list[int]) -> list[Tensor]:
        """Address of element ``starts[k][j] * steps[k]`` of ``tensors[k]``, for each j: one tensor each."""
        scale = torch.tensor([[s * t.element_size()] for s, t in zip(steps, tensors)], dtype=torch.int64)
        base = torch.tensor([[t.data_ptr()] for t in tensors], dtype=torch.int64)
        return list(torch.tensor(starts, dtype=torch.int64) * scale + base)

    inp = pop.first_w.shape[1]
    first = children.offsets[:-1]
    bs = [pop.slot(s) for s in bulk]                       # where the parents are stored
    ds = [pop.slot(d) for d in donor]
    src = [pop.offsets[s] for s in bs]
    don = [pop.offsets[d] for d in ds]
    cw, cb, sw, sb, dw, db = addresses(
        [children.first_w, children.first_b, pop.first_w, pop.first_b, pop.first_w, pop.first_b],
        [first, first, src, src, don, don], [inp, 1] * 3)
    native.recombine((cw, cb), (sw, sb), (dw, db), [w[0] for w in children.widths], [inp] * len(bulk),
                     [inp] * len(bulk), [c[0] for c in child_cuts], stream=recycled)
    for l in range(len(pop.layer_w)):
        wo, bo = pop.w_offsets[l], pop.b_offsets[l]
        src_w, src_b = [wo[s] for s in bs], [bo[s] for s in bs]
        cw, cb, sw, sb, dw, db = addresses(
            [children.layer_w[l], children.layer_b[l], pop.layer_w[l], pop.layer_b[l], pop.layer_w[l],
             pop.layer_b[l]],
            [children.w_offsets[l][:-1], children.b_offsets[l][:-1], src_w, src_b,
             [wo[d] for d in ds], [bo[d] for d in ds]], [1] * 6)
        native.recombine((cw, cb), (sw, sb), (dw, db), [bo[s + 1] - bo[s] for s in bs],    # out of each bulk parent
                         [pop.widths[s][l] for s in bulk], [pop.widths[d][l] for d in donor],
                         [c[l + 1] for c in child_cuts])


def _recombine_in_place(pop: Population, bulk: list[int], donor: list[int],
                        child_cuts: list[list[int]]) -> Population:
    """The children of a population of one architecture over its own storage (see
    :func:`recombine`, ``in_place``): child ``j`` keeps its bulk parent's slot if no earlier
    child took it, else gets the lowest slot that no child has as bulk; one
    :func:`ecomp.kernels.native.recombine_inplace` call per layer."""
    sources = [pop.slot(s) for s in bulk]
    donors = [pop.slot(d) for d in donor]
    slots: list[int | None] = []
    taken: set[int] = set()
    for s in sources:
        slots.append(None if s in taken else s)
        taken.add(s)
    free = iter(s for s in range(pop.size) if s not in taken)
    slots = [next(free) if s is None else s for s in slots]
    size, inp = pop.size, pop.first_w.shape[1]
    # Streaming stores for the first layers only (tens of MB, long out of cache when the next
    # forward pass reads them), as the copying path does; the later layers are a fraction of that.
    native.recombine_inplace(pop.first_w.view(size, pop.widths[0][0], inp), pop.first_b.view(size, -1), slots,
                             sources, donors, [c[0] for c in child_cuts], stream=True)
    for l in range(len(pop.layer_w)):
        rows, cols = pop.layer_shape(0, l)
        native.recombine_inplace(pop.layer_w[l].view(size, rows, cols), pop.layer_b[l].view(size, rows), slots,
                                 sources, donors, [c[l + 1] for c in child_cuts])
    children = Population([pop.widths[s] for s in bulk], pop.first_w, pop.first_b, pop.layer_w, pop.layer_b,
                          slots=slots)
    pop.retire()
    return children
