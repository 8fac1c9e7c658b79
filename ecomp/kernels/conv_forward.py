"""The forward pass of a convolutional population on one input batch.

Two ways, with the same results up to float rounding (the tests hold them together):

* :func:`forward_loop`: one network at a time, stage by stage (:func:`ecomp.nets.convnet.run`);
  the straightforward oracle.
* :func:`forward_grouped`: one batch per architecture. The individuals of one architecture
  (evolution makes most of them alike within a few dozen generations) run as one network: their
  first convolutions' filters concatenated into one GEMM on the shared images' patches, every
  later convolution as a grouped convolution (``groups`` = individuals), every linear stage as
  one batched product. With ``native`` (the run's CPU path where the C library builds), each
  max-pooled convolution stage is instead one fused pass of the C library
  (:func:`ecomp.kernels.native.conv_pool`: convolution, pool, bias and ReLU, only the pooled maps
  written), summed in the order of the PyTorch call it replaces, and each linear stage one pass of
  :func:`ecomp.kernels.blocked.linear_blocked` where it finds ``baddbmm``'s order at that shape.
  ``benchmarks/bench_conv.py``
  measures both; the grouped pass is the default.

Every tensor the grouped pass makes holds at most ``MAX_ELEMENTS`` floats: the individuals are
split into chunks, and the first convolution of a chunk runs a few images at a time, each
block pooled as soon as it is made. Two reasons: a 1,000-image pass of a whole population
would otherwise need GBs, and a block that small is reused from the heap (it is below glibc's
``mmap`` threshold, :mod:`ecomp.kernels.runtime`) and mostly still in cache when it is pooled,
where a 100 MB output is page-faulted in anew at every call and read back from memory
(``benchmarks/README.md`` has the measurements).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ecomp.kernels import blocked
from ecomp.kernels import native as native_kernels
from ecomp.kernels.backend import Backend
from ecomp.nets import convnet
from ecomp.nets.net_population import NetPopulation
from ecomp.nets.convnet import ConvPlan

MAX_ELEMENTS = 1 << 22          # floats per tensor of the grouped pass (16 MB)
BLOCK_ELEMENTS = 1 << 18        # floats per block of the first convolution, per torch thread (1 MB each:
                                # the fastest of 2^16-2^22 at one and two threads, bench_conv.py --blocks)


def forward_loop(pop: NetPopulation, x: Tensor, features: str = "flat") -> tuple[Tensor, list[list[Tensor]]]:
    """The oracle: one network at a time (:meth:`NetPopulation.run_each`)."""
    return pop.run_each(x, features)


def _chunk(plan: ConvPlan, units: tuple[int, ...], n_images: int, size: int) -> int:
    """Individuals of architecture ``units`` per later-stage chunk: their widest later maps fit."""
    widest = max([u * h * w for (u, h, w) in plan.with_units(units).maps()[1:-1]], default=1)
    return max(1, min(size, MAX_ELEMENTS // max(1, widest * n_images)))


def _relu_pool(plan: ConvPlan, l: int, h: Tensor, out: Tensor | None = None) -> Tensor:
    """ReLU then the stage's pooling; a max-pool first, on ``k * k`` times fewer values (the two
    commute exactly: the ReLU is monotonic). ``out``: where to write (channels-last)."""
    s = plan.stages[l]
    if s.pool == "max":
        return convnet.max_pool(h, s.pool_size, out).relu_()
    h = convnet._after(plan, l, h.relu_())
    return h if out is None else out.copy_(h)


def _bias_relu_pool(plan: ConvPlan, block: Tensor, n: int, window: int, b: Tensor, out: Tensor) -> None:
    """Stage 0's bias, ReLU and pooling of ``n`` images' bias-free convolution rows ``block``
    (as :func:`_window_patches` orders them) into ``out`` (channels-last). A max-pool (or none)
    runs first, as one maximum over the window's slabs, and the bias is added to the pooled
    maps, ``k * k`` times fewer values: adding a per-channel constant and the ReLU are both
    monotonic, so max-pooling commutes with them exactly (float rounding is monotonic too). An
    average pool takes the bias first."""
    s = plan.stages[0]
    f = block.shape[1]
    o = out.permute(0, 2, 3, 1)                                          # (n, H', W', f), contiguous
    if s.pool in (None, "max"):
        if window == 1:
            o.copy_(block.view(o.shape))
        else:
            torch.amax(block.view(n, window * window, -1, f), 1, out=o.view(n, -1, f))
        o.add_(b).relu_()
        return
    _, hh, ww = plan.maps()[0]
    h = block.view(n, hh, ww, f).permute(0, 3, 1, 2).add_(b.view(1, -1, 1, 1))
    _relu_pool(plan, 0, h, out)


def _copy(dst: Tensor, src: Tensor) -> Tensor:
    """``dst.copy_(src)`` in 16- or 8-byte words where the innermost dimension's runs allow:
    a channels-last map regrouped per individual moves runs of only ``c`` channels, which a
    float-by-float copy moves at a fraction of the memory's speed."""
    for wide, k in ((torch.complex128, 4), (torch.float64, 2)):
        if src.shape[-1] % k == 0:
            try:
                return dst.view(wide).copy_(src.view(wide)).view(dst.dtype)
            except RuntimeError:             # an offset or stride that is not a whole word
                continue
    return dst.copy_(src)


def _pixel_rows(h: Tensor) -> Tensor | None:
    """A channels-last ``(n, C, H, W)`` map as ``(n * H * W, C)`` rows (a view), or None where
    its pixels are not evenly spaced (a slice of images or rows of a larger map)."""
    n, c, hh, ww = h.shape
    if h.stride(1) != 1 or h.stride(2) != ww * h.stride(3) or h.stride(0) != hh * h.stride(2):
        return None
    return h.as_strided((n * hh * ww, c), (h.stride(3), 1))


def _flat_features(h: Tensor, g: int, features: str, native: bool = False) -> list[Tensor]:
    """Per individual of a channels-last ``(n, g*c, H, W)`` block: its maps as ``(n, features)`` rows.
    ``native``: the copy by the C library (:func:`ecomp.kernels.native.gather_runs`, the same
    bits) where the block's pixels are evenly spaced rows of float32 channels."""
    n, gc, hh, ww = h.shape
    c = gc // g
    if features == "flat":               # (n, H, W, g, c) in memory -> (g, n, H*W*c)
        per = h.new_empty(g, n, hh * ww, c)
        rows = _pixel_rows(h) if native and h.dtype == torch.float32 else None
        if rows is not None:
            native_kernels.gather_runs(per.view(g, -1, c), rows.view(-1, g, c).permute(1, 0, 2))
        else:
            _copy(per, h.permute(0, 2, 3, 1).view(n, hh * ww, g, c).permute(2, 0, 1, 3))
        per = per.view(g, n, -1)
    else:
        per = h.mean((2, 3)).view(n, g, c).transpose(0, 1)
    return list(per.unbind(0))


def _parts(pop: NetPopulation, order: list[int], per_unit: int, n_images: int) -> Iterator[list[int]]:
    """Consecutive runs of ``order`` of one width in stage 0 whose units there times ``per_unit``
    fit ``MAX_ELEMENTS`` (at least one individual each), and that hold no more individuals of one
    architecture than its later stages take in one chunk (:func:`_chunk`): a chunk's stage-0 maps
    are then a whole run's slice of the part, and each individual's maps a block of their own
    where the C library makes them (:func:`_first_stage`)."""
    step: dict[tuple[int, ...], int] = {}
    for i in order:
        if pop.widths[i] not in step:
            step[pop.widths[i]] = _chunk(pop.plan, pop.widths[i], n_images, len(order))
    start = 0
    while start < len(order):
        end, total, cap = start, 0, len(order)
        while end < len(order) and (end == start or ((total + pop.widths[order[end]][0]) * per_unit <= MAX_ELEMENTS
                                                     and end - start < min(cap, step[pop.widths[order[end]]])
                                                     and pop.widths[order[end]][0] == pop.widths[order[start]][0])):
            total += pop.widths[order[end]][0]
            cap = min(cap, step[pop.widths[order[end]]])
            end += 1
        yield order[start:end]
        start = end


def _window_patches(x4: Tensor, plan: ConvPlan) -> tuple[Tensor, int, int]:
    """Stage 0's image patches ``(n * rows, C*k*k)`` and ``(rows per image, pooling window)``.
    Before a ``p x p`` max-pool, each image's rows are the output positions window-major,
    ``(dy, dx, y', x')`` with ``y' < H/p, x' < W/p``: the ``p * p`` positions of every window are
    ``p * p`` contiguous slabs of rows, and the pool is one maximum over them. Positions the pool
    drops (the last rows or columns of an odd size) are left out. Otherwise row-major ``(y, x)``
    and a window of 1."""
    s = plan.stages[0]
    n, k = x4.shape[0], s.kernel
    _, hh, ww = plan.maps()[0]
    cols = F.unfold(x4, k, padding=s.padding, stride=s.stride)                  # (n, K, H*W)
    if s.pool != "max" or s.pool_size == 1:
        return cols.transpose(1, 2).reshape(n * hh * ww, -1), hh * ww, 1
    p = s.pool_size
    ph, pw = hh // p, ww // p
    win = cols.view(n, -1, hh, ww)[:, :, :ph * p, :pw * p].reshape(n, -1, ph, p, pw, p)
    return win.permute(0, 3, 5, 2, 4, 1).reshape(n * p * p * ph * pw, -1), p * p * ph * pw, p


@torch.no_grad()
def _first_stage(pop: NetPopulation, order: list[int], x4: Tensor, native: bool = False
                 ) -> Iterator[tuple[list[int], Tensor]]:
    """Stage 0 (a convolution) of individuals ``order``, chunk by chunk: ``(individuals, their
    pooled outputs (n, sum of units, H', W') channels-last)``. A chunk's pooled maps fit
    ``MAX_ELEMENTS``; its convolution runs on as many images at a time as fit it too.
    ``native``: a max-pooled float32 stage by the C library's fused kernel
    (:func:`ecomp.kernels.native.conv_pool`) where it has a copy for this CPU; a chunk (of one
    width, :func:`_parts`) then comes as ``(individuals, n, units, H', W')``."""
    plan, s = pop.plan, pop.plan.stages[0]
    n = x4.shape[0]
    _, hh, ww = plan.maps()[0]
    ph, pw = (hh // s.pool_size, ww // s.pool_size) if s.pool else (hh, ww)
    fused = native and _fusable(s) and x4.dtype == torch.float32 and native_kernels.conv_block() > 0
    patches = None
    for part in _parts(pop, order, n * ph * pw, n):
        w, b = _joined(pop, 0, part)
        f = w.shape[0]
        if fused:
            # a part has one width (_parts): each individual a group of its own on the same images
            # (a group dimension of stride 0), its maps a block of its own, (g, n, H', W', u), which
            # the similarity and the later stages read as they are; made with the images in the
            # vectors' lanes (conv_pool's ``auto``)
            g = len(part)
            out = x4.new_empty(g, n, ph, pw, f // g)
            xg = x4.unsqueeze(0).expand(g, *x4.shape)
            filters = pop.joined(0, part, "patches/groups", lambda: native_kernels.conv_filters(w, b, g, "patches"))
            if native_kernels.conv_pool(xg, w, b, s.padding, s.stride, s.pool_size, out, g, "patches", filters):
                yield part, out.permute(0, 1, 4, 2, 3)
                continue
        out = x4.new_empty(n, ph, pw, f).permute(0, 3, 1, 2)
        if patches is None:
            patches, rows, window = _window_patches(x4, plan)
        per_block = min(MAX_ELEMENTS, BLOCK_ELEMENTS * torch.get_num_threads())
        m = max(1, per_block // (f * rows))                                               # images per block
        buffer = x4.new_empty(min(n, m) * rows, f)
        for i in range(0, n, m):
            j = min(n, i + m)
            block = torch.mm(patches[i * rows:j * rows], w.reshape(f, -1).T, out=buffer[:(j - i) * rows])
            _bias_relu_pool(plan, block, j - i, window, b, out[i:j])
        yield part, out


def _fusable(s) -> bool:
    """Whether the C library's fused kernel takes a convolution stage: a max-pool of 2x2 or more
    (its registers hold four window positions of a pooled pixel; an unpooled stage would use a
    quarter of them, slower than oneDNN or MKL)."""
    return s.pool == "max" and s.pool_size > 1


_TERMS: dict[tuple[int, int, int], Tensor] = {}


def _flatten_terms(c: int, hh: int, ww: int) -> Tensor:
    """Where each feature of a ``(c, hh, ww)`` map's flattening (channel-major, as ``nn.Flatten``
    orders it) lies in its channels-last memory ``(hh, ww, c)``: int32, built once per shape."""
    key = (c, hh, ww)
    if key not in _TERMS:
        _TERMS[key] = torch.arange(c * hh * ww, dtype=torch.int32).view(hh, ww, c).permute(2, 0, 1).flatten()
    return _TERMS[key]


def _joined(pop: NetPopulation, l: int, members: list[int]) -> tuple[Tensor, Tensor]:
    """Individuals ``members``' weights of stage ``l`` concatenated along the outputs, and their
    biases; built once per population (:meth:`NetPopulation.joined`)."""
    return pop.joined(l, members, "cat", lambda: (torch.cat([pop.members[i][l][0] for i in members]),
                                                  torch.cat([pop.members[i][l][1] for i in members])))


@torch.no_grad()
def _later(pop: NetPopulation, members: list[int], h: Tensor, features: str, native: bool = False
           ) -> tuple[Tensor, list[list[Tensor]]]:
    """Stages 1 on of individuals ``members`` (one architecture) from their stage-0 outputs ``h``
    ``(n, g*u, H, W)`` or ``(g, n, u, H, W)``: logits ``(g, n, classes)`` and each later
    prunable stage's outputs."""
    plan, g, n = pop.plan, len(members), h.shape[-4]
    fused = native and h.dtype == torch.float32 and native_kernels.conv_block() > 0
    acts: list[list[Tensor]] = []
    last = len(plan.stages) - 1
    for l in range(1, len(plan.stages)):
        s = plan.stages[l]
        w, b = _joined(pop, l, members)
        if s.kind == "conv":
            if fused and _fusable(s):
                # per individual (g, n, H', W', u): the flat features as they are, and the
                # next stage's input as (g, n, u, H', W')
                _, hh, ww = plan.with_units(pop.widths[members[0]]).maps()[l]
                p = s.pool_size
                per = h.new_empty(g, n, hh // p, ww // p, w.shape[0] // g)
                filters = pop.joined(l, members, "pixels", lambda: native_kernels.conv_filters(w, b, g, "pixels"))
                if native_kernels.conv_pool(h, w, b, s.padding, s.stride, p, per, g, "pixels", filters):
                    h = per.permute(0, 1, 4, 2, 3)
                    acts.append(list(per.flatten(2).unbind(0)) if features == "flat" else
                                list(per.mean((2, 3)).unbind(0)))
                    continue
            if h.dim() == 5:
                h = h.permute(1, 0, 2, 3, 4).flatten(1, 2)             # (n, g*u, H, W)
            w = w.contiguous(memory_format=torch.channels_last)
            h = F.conv2d(h.contiguous(memory_format=torch.channels_last), w, b, s.stride, s.padding, 1, g)
            h = _relu_pool(plan, l, h)
            acts.append(_flat_features(h, g, features, native))
            continue
        terms = None
        if h.dim() == 5:                                               # the Flatten: (g, n, u*h*w)
            cl = h.permute(0, 1, 3, 4, 2)
            if fused and cl.is_contiguous():    # channels-last maps, read where they are in (u, h, w) order
                terms = _flatten_terms(*h.shape[2:])
                h = cl.view(g, n, -1)
            else:
                h = h.reshape(g, n, -1)
        elif h.dim() == 4:
            h = h.reshape(n, g, -1).transpose(0, 1)
        k, f = w.shape[-1], w.shape[0] // g
        block = blocked.linear_block(n, k, f) if fused and h.stride(-1) == 1 else 0
        if terms is not None and not block:
            h, terms = h[..., terms.long()], None
        if block:          # the C kernel: baddbmm's sums in its order, the ReLU as they are stored
            filters = pop.joined(l, members, "linear", lambda: native_kernels.conv_filters(w.view(-1, k, 1, 1), b, g))
            h = blocked.linear_blocked(h, w.view(g, f, k), b.view(g, f), block, l < last, filters, terms)
        else:
            h = torch.baddbmm(b.view(g, 1, -1), h, w.view(g, f, k).transpose(1, 2))   # (g, n, out)
            if l < last:
                h = h.relu_()
        if l < last:
            acts.append(list(h.unbind(0)))
    return h, acts


@torch.no_grad()
def forward_grouped(pop: NetPopulation, x: Tensor, features: str = "flat", native: bool = False
                    ) -> tuple[Tensor, list[list[Tensor]]]:
    """:func:`forward_loop`'s results, one batch per architecture (in chunks). A first stage
    that is a convolution runs for the whole population at once (:func:`_first_stage`).
    ``native``: the C library's fused max-pooled convolution stages and per-individual copies of
    the maps (the same bits where MKL and oneDNN sum in order, as on the CPUs measured)."""
    plan, n = pop.plan, x.shape[0]
    x4 = x.view(n, *plan.in_shape)
    logits = x.new_empty(pop.size, n, pop.classes)
    n_stages = len(plan.stages) - 1
    hidden: list[list[Tensor | None]] = [[None] * pop.size for _ in range(n_stages)]
    groups = pop.groups()
    if plan.stages[0].kind != "conv":
        raise ValueError("a convolutional population starts with a convolution")
    widths = pop.widths
    # architectures by their first stage's width (the runs of one width make parts of their own)
    order = [i for m in sorted(groups.values(), key=lambda m: widths[m[0]][0]) for i in m]
    for part, h in _first_stage(pop, order, x4, native):
        # the chunk holds whole runs of one architecture, one after the other: each run's
        # stage-0 maps are a slice of channels, and its later stages run together
        start, channel = 0, 0
        while start < len(part):
            units, end = widths[part[start]], start
            while end < len(part) and widths[part[end]] == units:
                end += 1
            run = part[start:end]
            if h.dim() == 5:                     # (g, n, u, H, W): each individual's maps a block of its own
                h0 = h[start:end]
                blocks = h0.permute(0, 1, 3, 4, 2)                             # (g, n, H, W, u), contiguous
                flat = list(blocks.flatten(2).unbind(0) if features == "flat" else blocks.mean((2, 3)).unbind(0))
            else:
                h0 = h[:, channel:channel + len(run) * units[0]]
                channel += len(run) * units[0]
                flat = _flat_features(h0, len(run), features, native)
                if features == "flat" and len(run) == 1:     # its copy is h0, contiguous: the later stages read it
                    h0 = flat[0].view(n, *h0.shape[2:], units[0]).permute(0, 3, 1, 2)
            start = end
            for i, a in zip(run, flat):
                hidden[0][i] = a
            step = _chunk(plan, units, n, len(run))
            for s in range(0, len(run), step):
                sub = run[s:s + step]
                h_sub = h0[s:s + len(sub)] if h0.dim() == 5 else h0[:, s * units[0]:(s + len(sub)) * units[0]]
                out, acts = _later(pop, sub, h_sub, features, native)
                logits[sub] = out.to(logits.dtype)     # bfloat16 under evolution.precision=bfloat16
                for l in range(1, n_stages):
                    for j, i in enumerate(sub):
                        hidden[l][i] = acts[l - 1][j]
    return logits, hidden


def forward(pop: NetPopulation, x: Tensor, features: str = "flat", grouped: bool = True,
            backend: Backend | None = None) -> tuple[Tensor, list[list[Tensor]], None]:
    """The population's forward pass as :func:`ecomp.kernels.forward.forward` returns it (no
    stacks). ``backend``: the run's; its ``native_copies`` make the grouped pass's copies C's."""
    if not grouped:
        logits, hidden = forward_loop(pop, x, features)
    else:
        logits, hidden = forward_grouped(pop, x, features, native=backend is not None and backend.native_copies)
    return logits, hidden, None
