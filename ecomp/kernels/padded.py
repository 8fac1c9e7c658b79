"""A population of several architectures as zero-padded stacks: the GPU's forward pass.

On the CPU a mixed-width population runs its later layers as one small GEMM per network
(:func:`ecomp.kernels.forward.forward`), which is as fast as anything there and keeps the
paper's numbers. On a GPU that loop is hundreds of kernel launches per generation. Here
every later layer becomes one ``(pop, widest out, widest in)`` tensor, gathered from the
packed storage through index arithmetic (no per-individual Python loop, no host
synchronisation), with zeros beyond each network's shape, and the forward pass is one
batched product per layer.

Why zeros are exact: a padded unit has zero weights in and a zero bias, so its activation
is ``relu(0) = 0``, and the zero columns of the next layer ignore whatever it holds; the
logits and every real unit are those of the network alone (up to the float rounding of a
different product). The padded stacks go to the similarity measure as ``stacked``: a zero
feature adds nothing to a Gram matrix, its mean or its norms, so t-SNE's distances and
CKA's centred Grams are unchanged (see :meth:`ecomp.measures.base.SimilarityMeasure.score`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ecomp.nets.population import Population


def _column(values: list[int], device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=torch.int64, device=device).view(-1, 1, 1)


def padded_layer(pop: Population, l: int) -> tuple[Tensor, Tensor]:
    """Later layer ``l`` of every individual as ``(pop, max out, max in)`` weights and
    ``(pop, max out)`` biases, zero beyond each individual's ``(out, in)``; individual order."""
    dev = pop.device
    shapes = [pop.layer_shape(i, l) for i in range(pop.size)]
    outs = _column([o for o, _ in shapes], dev)
    ins = _column([i for _, i in shapes], dev)
    slots = [pop.slot(i) for i in range(pop.size)]
    w_start = _column([pop.w_offsets[l][s] for s in slots], dev)
    b_start = _column([pop.b_offsets[l][s] for s in slots], dev)
    max_out, max_in = max(o for o, _ in shapes), max(i for _, i in shapes)
    r = torch.arange(max_out, device=dev).view(1, -1, 1)
    c = torch.arange(max_in, device=dev).view(1, 1, -1)
    rows_ok = r < outs                                              # (pop, max_out, 1)
    ok = rows_ok & (c < ins)                                        # (pop, max_out, max_in)
    w = pop.layer_w[l].take(torch.where(ok, w_start + r * ins + c, 0)) * ok
    b = pop.layer_b[l].take(torch.where(rows_ok, b_start + r, 0)) * rows_ok
    return w, b.squeeze(2)


def padded_first(pop: Population, z0t: Tensor) -> Tensor:
    """The packed first-layer activations ``(sum of widths, batch)`` as ``(pop, max width, batch)``,
    zero beyond each individual's width."""
    dev = z0t.device
    widths = _column([w[0] for w in pop.widths], dev)
    start = _column([pop.offsets[pop.slot(i)] for i in range(pop.size)], dev)
    r = torch.arange(max(w[0] for w in pop.widths), device=dev).view(1, -1, 1)
    ok = (r < widths).view(pop.size, -1)                            # (pop, max width)
    rows = torch.where(ok, start.view(-1, 1) + r.view(1, -1), 0)
    return z0t.index_select(0, rows.view(-1)).view(pop.size, -1, z0t.shape[1]) * ok.unsqueeze(2)


@torch.no_grad()
def forward_padded(pop: Population, z0t: Tensor) -> tuple[Tensor, list[list[Tensor]], list[Tensor]]:
    """:func:`ecomp.kernels.forward.forward`'s results from the first layer's post-ReLU activations
    ``z0t``: logits ``(pop, batch, classes)``, per-individual hidden activations (views of the
    real units), and the zero-padded stacks ``(pop, max width, batch)`` per hidden layer."""
    if pop.slots is not None:      # only one architecture is stored out of order: it has the batched path
        raise ValueError("the padded forward pass needs a population stored in individual order")
    a = padded_first(pop, z0t)
    stacked = [a]
    n_hidden = len(pop.widths[0])
    for l in range(n_hidden):
        w, b = padded_layer(pop, l)
        a = torch.baddbmm(b.unsqueeze(2), w, a)                    # (pop, max out, batch)
        if l < n_hidden - 1:
            stacked.append(a.relu_())
    hidden = [[t[i, :pop.widths[i][l]].T for i in range(pop.size)] for l, t in enumerate(stacked)]
    return a.transpose(1, 2), hidden, stacked
