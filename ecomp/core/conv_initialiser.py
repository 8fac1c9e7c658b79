"""The initial population of a convolutional parent: the paper's L1 pruning applied to units.

A unit is a stage's output channel (its filter and bias) or a hidden neuron; filters are ranked
by the L1 norm of their weights (Li et al. 2017, "Pruning Filters for Efficient ConvNets"),
every stage on the intact parent, and each stage keeps ``pruned_width(units, keep)`` of them in
their original order. Removing a unit removes the matching input channel of the next
convolution, or after the Flatten the unit's block of ``height x width`` columns of the first
linear layer. On an MLP this is exactly :func:`ecomp.core.initialiser.l1_population`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ecomp.core.initialiser import keep_ratios, pruned_width
from ecomp.nets.conv_population import ConvPopulation
from ecomp.nets.convnet import ConvNet


def l1_ranking(net: ConvNet) -> list[Tensor]:
    """Per prunable stage: unit indices by decreasing L1 norm of their incoming weights."""
    return [torch.argsort(w.abs().flatten(1).sum(1), descending=True, stable=True) for w, _ in net.layers[:-1]]


def input_columns(net: ConvNet, stage: int, kept: Tensor) -> Tensor:
    """The input columns of ``stage`` that units ``kept`` of the stage before feed: the same
    channels for a convolution, their blocks of the flattened maps for the first linear stage."""
    s, before = net.plan.stages[stage], net.plan.stages[stage - 1]
    if s.kind == "linear" and before.kind == "conv":
        hw = net.plan.flat_size()
        return (kept.view(-1, 1) * hw + torch.arange(hw, device=kept.device)).flatten()
    return kept


def prune(net: ConvNet, keep: list[Tensor]) -> ConvNet:
    """The sub-network keeping units ``keep[l]`` (sorted indices) of each prunable stage."""
    out = []
    prev = None
    for l, (w, b) in enumerate(net.layers):
        rows = keep[l] if l < len(keep) else None
        if rows is not None:
            w, b = w[rows], b[rows]
        if prev is not None:
            w = w[:, input_columns(net, l, prev)]
        out.append((w.contiguous(), b.contiguous()))
        prev = rows
    return ConvNet(net.plan.with_units(tuple(w.shape[0] for w, _ in out[:-1])), out)


def l1_population(parent: ConvNet, size: int, keep_high: float, keep_low: float) -> ConvPopulation:
    """``size`` pruned copies of ``parent`` with evenly spaced keep ratios."""
    ranking = l1_ranking(parent)
    members = []
    for ratio in keep_ratios(size, keep_high, keep_low):
        keep = [r[:pruned_width(len(r), ratio)].sort().values for r in ranking]
        members.append(prune(parent, keep).layers)
    return ConvPopulation(parent.plan, members)
