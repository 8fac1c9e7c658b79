"""The initial population: structured L1 pruning of the parent (Li et al., Torch-Pruning's L1
criterion), on units of any layer kind.

Every prunable layer is ranked on the intact parent by the L1 norm of each unit's incoming
weights (a neuron's row, a filter); individual ``i`` keeps ``pruned_width(units, ratio_i)`` of
each layer's best, in their original order, so crossover aligns units of the same origin.
Removing a unit removes what it feeds in the next layer (:func:`ecomp.nets.structure.prune`).
"""

from __future__ import annotations

from ecomp.nets.kinds import population_of
from ecomp.nets.structure import Structure, l1_ranking, prune


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


def l1_population(parent: Structure, size: int, keep_high: float, keep_low: float):
    """``size`` pruned copies of ``parent`` with evenly spaced keep ratios, as the population of
    its kind (:func:`ecomp.nets.kinds.population_of`)."""
    ranking = l1_ranking(parent)
    members = []
    for ratio in keep_ratios(size, keep_high, keep_low):
        keep = [r[:pruned_width(len(r), ratio)].sort().values for r in ranking]
        members.append(prune(parent, keep))
    return population_of(parent, members)
