"""Initial population by structured L1 pruning of the parent (Torch-Pruning's L1 criterion)."""

from __future__ import annotations

import torch

from ecomp.nets.network import Layers
from ecomp.nets.population import Population


def keep_ratios(size: int, high: float, low: float) -> list[float]:
    """``size`` evenly spaced keep ratios from ``high`` down to ``low``.

    The authors prune amounts ``0.1, 0.107, ..., 0.793`` (keep 0.9 ... 0.207):
    ``keep_ratios(100, 0.9, 0.207)`` gives exactly those.
    """
    if size == 1:
        return [high]
    step = (high - low) / (size - 1)
    return [high - i * step for i in range(size)]


def pruned_width(width: int, keep: float) -> int:
    """Width left after removing ``int(amount * width)`` neurons, ``amount = 1 - keep``.

    Rounded to 9 decimals before truncation so that floating-point noise in the
    amount (``0.625`` stored as ``0.62499999...``) cannot change the count.
    """
    removed = int(round((1.0 - keep) * width, 9))
    return max(1, width - removed)


def l1_ranking(parent: Layers) -> list[torch.Tensor]:
    """Per hidden layer: neuron indices by decreasing L1 norm of their incoming weights."""
    return [torch.argsort(w.abs().sum(1), descending=True, stable=True) for w, _ in parent[:-1]]


def prune(parent: Layers, keep: list[torch.Tensor]) -> Layers:
    """The sub-network keeping hidden neurons ``keep[l]`` (sorted indices) of each hidden layer."""
    out: Layers = []
    prev = None
    for l, (w, b) in enumerate(parent):
        rows = keep[l] if l < len(keep) else None
        if rows is not None:
            w, b = w[rows], b[rows]
        if prev is not None:
            w = w[:, prev]
        out.append((w.contiguous(), b.contiguous()))
        prev = rows
    return out


def l1_population(parent: Layers, size: int, keep_high: float, keep_low: float) -> Population:
    """``size`` pruned copies of ``parent`` with evenly spaced keep ratios.

    Every hidden layer is ranked on the intact parent; kept neurons stay in
    their original order so that crossover aligns neurons of the same origin.
    """
    ranking = l1_ranking(parent)
    individuals = []
    for ratio in keep_ratios(size, keep_high, keep_low):
        keep = [r[:pruned_width(len(r), ratio)].sort().values for r in ranking]
        individuals.append(prune(parent, keep))
    return Population.from_individuals(individuals)
