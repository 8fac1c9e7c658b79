"""Crossover and mutation on a convolutional population: the paper's rules applied to units.

Crossover (the single-cut rule of :mod:`ecomp.core.recombination`): for a stage with weights
``W1`` (parent 1) and ``W2`` (parent 2) and a cut ``c``, child 1 is ``W2`` with the block of its
first ``c`` output units by its first ``c`` input units taken from ``W1`` (biases follow the
rows), child 2 the mirror image. Rows are output units; columns are input units: input channels
of a convolution (all of them when it has fewer than ``c``, as a first convolution on grey
images does), each channel's ``height x width`` block of columns after the Flatten, neurons
after a linear stage, pixels for an MLP's first layer.

The cut is uniform on ``[1, limit]``, drawn per stage and pair as the MLP's are. ``limit`` is
the smallest of both parents' output units and of their input units, where the first stage's
input counts the image's features (``C x H x W``, 784 for FashionMNIST). On an MLP that is
the paper's bound exactly; on a convolution the input term never caps the cut at the image's
one channel, so crossover can exchange up to all of the first stage's filters.

Mutation multiplies every weight (not the biases) of a chosen child by a factor from
``U(low, high)``, drawn individual by individual, stage by stage, as the MLP's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ecomp.nets.conv_population import ConvPopulation


def draw_cuts(pop: ConvPopulation, pairs: Tensor, generator: torch.Generator) -> Tensor:
    """``(n_pairs, n_stages)`` cut points, each uniform on ``[1, limit]``."""
    c, h, w = pop.plan.in_shape
    features, classes = c * h * w, pop.classes
    widths = pop.widths
    limits = []
    for a, b in pairs.tolist():
        dims_a, dims_b = (features, *widths[a], classes), (features, *widths[b], classes)
        limits.append([min(dims_a[l], dims_a[l + 1], dims_b[l], dims_b[l + 1]) for l in range(len(dims_a) - 1)])
    lim = torch.tensor(limits, dtype=torch.float64)
    u = torch.rand(lim.shape, generator=generator, dtype=torch.float64)
    return (1 + (u * lim).floor()).clamp_(max=lim).to(torch.int64)


def block_columns(pop: ConvPopulation, stage: int, cut: int) -> int:
    """How many input columns (of the stage's weight, flattened past the rows) the cut's block spans."""
    s = pop.plan.stages[stage]
    if stage == 0:
        return min(cut, pop.plan.in_shape[0]) if s.kind == "conv" else cut
    if s.kind == "linear" and pop.plan.stages[stage - 1].kind == "conv":
        return cut * pop.plan.flat_size()
    return cut


@torch.no_grad()
def recombine(pop: ConvPopulation, pairs: Tensor, generator: torch.Generator) -> ConvPopulation:
    """Two children per pair (``2k`` from pair ``k``'s second parent with the first's block, ``2k + 1``
    the mirror); the parents are not modified."""
    cuts = draw_cuts(pop, pairs, generator).tolist()
    children = []
    for (a, b), cut in zip(pairs.tolist(), cuts):
        for bulk, donor in ((b, a), (a, b)):
            child = []
            for l, ((w, bias), (dw, db)) in enumerate(zip(pop.members[bulk], pop.members[donor])):
                c, cols = cut[l], block_columns(pop, l, cut[l])
                w, bias = w.clone(), bias.clone()
                w[:c, :cols] = dw[:c, :cols]
                bias[:c] = db[:c]
                child.append((w, bias))
            children.append(child)
    return ConvPopulation(pop.plan, children)


@torch.no_grad()
def mutate_(pop: ConvPopulation, rate: float, low: float, high: float, generator: torch.Generator) -> list[int]:
    """In place: each individual, with probability ``rate``, has every weight multiplied by its own
    factor from ``U(low, high)``. Returns the mutated individuals' indices."""
    chosen = (torch.rand(pop.size, generator=generator) < rate).nonzero().flatten().tolist()
    for i in chosen:
        for w, _ in pop.members[i]:
            factors = torch.empty(w.shape, dtype=w.dtype).uniform_(low, high, generator=generator)
            w.mul_(factors.to(w.device))
    return chosen
