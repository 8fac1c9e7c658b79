"""The forward pass of a whole population on one input batch.

The first layers of all individuals are one packed matrix (:class:`ecomp.nets.population.Population`),
so the population's first layer is one GEMM on the shared input, in blocks of rows that stay
in cache. The later layers run one of three ways, as the :class:`ecomp.kernels.backend.Backend`
chooses: one small GEMM per network (the loop, and the oracle of the others); for a population
of one architecture, one batched product per layer; for mixed widths on a GPU, zero-padded
batched products (:mod:`ecomp.kernels.padded`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ecomp.kernels.backend import Backend, for_tensor
from ecomp.kernels.padded import forward_padded
from ecomp.nets.population import Population

FIRST_LAYER_CHUNK = 512   # rows of the packed first layer per GEMM call (see first_layer)


def first_layer(pop: Population, x: Tensor, chunk: int = FIRST_LAYER_CHUNK, out: Tensor | None = None) -> Tensor:
    """``(sum of widths, batch)``: every individual's first-layer pre-activations, transposed.

    One product over every row would be a single call, but BLAS then packs the whole weight
    matrix and runs well below its speed on the small side of a batch; blocks of a few hundred
    rows stay in cache (``benchmarks/bench_kernels.py`` measures both). ``out``: flat storage of
    at least ``sum of widths x batch`` elements to write into (see :class:`Workspace`), else a
    fresh tensor.
    """
    pop.check_live()
    xt = x.T.contiguous()                                      # (input, batch)
    shape = (pop.first_w.shape[0], x.shape[0])
    if out is not None and out.numel() >= shape[0] * shape[1] and out.dtype == x.dtype and out.device == x.device:
        z = out[:shape[0] * shape[1]].view(shape)
    else:
        z = x.new_empty(shape)
    for s in range(0, z.shape[0], chunk):
        e = min(s + chunk, z.shape[0])
        torch.addmm(pop.first_b[s:e, None], pop.first_w[s:e], xt, out=z[s:e])
    return z


class Workspace:
    """Flat storage reused by every call of :func:`forward` that is given it (the evaluator keeps
    one): the first layer's activations of a large population are tens of MB, over glibc's mmap
    threshold, where a fresh tensor per generation would be page-faulted in every time. Grows when
    a larger pass needs it; what :func:`forward` returns is only valid until the next call with
    the same workspace."""

    def __init__(self) -> None:
        self.buffer: Tensor | None = None

    def get(self, n: int, like: Tensor) -> Tensor:
        b = self.buffer
        if b is None or b.numel() < n or b.dtype != like.dtype or b.device != like.device:
            self.buffer = None                                 # free the old one first
            self.buffer = b = like.new_empty(n)
        return b


@torch.no_grad()
def forward(pop: Population, x: Tensor, batched: bool | None = None, workspace: Workspace | None = None,
            padded: bool | None = None, backend: Backend | None = None
            ) -> tuple[Tensor, list[list[Tensor]], list[Tensor] | None]:
    """Logits ``(pop, batch, classes)``, post-ReLU hidden activations, and (batched and padded
    paths only) the same activations stacked.

    ``hidden[l][i]`` is individual ``i``'s layer-``l`` activation ``(batch, width)``, a
    transposed view. Evolution makes the population converge to one architecture (every
    individual with the same widths, and so in its final pick); then the later layers run as one
    batched product per layer instead of one small GEMM per individual (when ``backend.batched``
    says so for this batch), and ``stacked[l]`` is the ``(pop, width, batch)`` tensor the views
    come from, in slot order (see :class:`Population`). ``batched``: ``None`` lets the backend
    choose; ``False`` forces the loop (the oracle for the batched path in the tests).
    ``workspace``: storage for the first layer's activations, reused from call to call (the
    results then live until the next call). ``padded``: a population of several architectures as
    zero-padded batched products (one architecture takes the batched path whatever it says);
    ``None``: as the backend says; then ``stacked[l]`` is ``(pop, widest, batch)`` in individual
    order, zeros beyond each width. ``backend``: None = the default for the population's device.
    """
    backend = backend or for_tensor(pop.first_w)
    out = None if workspace is None else workspace.get(pop.first_w.shape[0] * x.shape[0], x)
    z0t = first_layer(pop, x, out=out).relu_()                 # (sum_h, batch), slot order
    classes = pop.classes
    n_hidden = len(pop.widths[0])
    uniform = pop.uniform
    if not uniform and (padded if padded is not None else (backend.padded and batched is not False)):
        return forward_padded(pop, z0t)
    if batched is None:
        batched = uniform and pop.size > 1 and backend.batched(x.shape[0])
    if batched:
        if not uniform:
            raise ValueError("the batched forward pass needs every individual to have the same widths")
        a = z0t.view(pop.size, pop.widths[0][0], x.shape[0])    # (pop, h0, batch), a view
        stacked = [a]
        for l in range(n_hidden):
            w, b = pop.stacked(l)                                             # (pop, out, in): views
            a = torch.baddbmm(b.unsqueeze(2), w, a)                           # (pop, out, batch)
            if l < n_hidden - 1:
                stacked.append(a.relu_())
        logits = a.transpose(1, 2)                                            # (pop, batch, classes)
        order = [pop.slot(i) for i in range(pop.size)]
        if pop.slots is not None:                                             # slot order -> individual order
            logits = logits.index_select(0, pop.slot_index())
        hidden = [[t[s].T for s in order] for t in stacked]
        return logits, hidden, stacked
    z0 = z0t.T                                                 # (batch, sum_h), a view
    logits = x.new_empty(pop.size, x.shape[0], classes)
    hidden: list[list[Tensor]] = [[] for _ in range(n_hidden)]
    for i in range(pop.size):
        o = pop.offsets[pop.slot(i)]
        a = z0[:, o:o + pop.widths[i][0]]                      # (batch, h)
        hidden[0].append(a)
        layers = pop.rest[i]
        for l in range(len(layers) - 1):
            w, b = layers[l]
            a = torch.addmm(b, a, w.T).relu_()                 # (batch, h)
            hidden[l + 1].append(a)
        w, b = layers[-1]
        torch.addmm(b, a, w.T, out=logits[i])                  # (batch, classes)
    return logits, hidden, None
