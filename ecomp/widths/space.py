"""Widths as a search space: keep fractions per group, their networks and a MACs budget.

A candidate is ``keep`` ``(G,)``: the kept fraction of each prunable group of the parent.
:meth:`WidthSpace.widths` turns it into unit counts with the rule every pruning here uses
(:func:`ecomp.core.initialiser.pruned_width`), and :meth:`WidthSpace.network` keeps that many
of each group's best units by the L1 ranking taken once on the intact parent (the selection of
``method=l1_prune``; a uniform keep vector gives exactly its network), in their original order.

The budget: a candidate's MACs relative to the parent's, read from the blueprint with those
widths (no network is built to measure it), must lie within ``tolerance`` of ``macs``.
:meth:`WidthSpace.repair` moves any keep vector there: a bisection on one multiplier common to
all fractions (the vector's shape is kept), then single units added to or removed from one
group at a time, the move that lands closest to the target first. A vector that still misses
(the target is below what one unit per group costs, or above the parent) is rejected (None).
A repaired vector is stored as ``widths / units``, so it maps back to exactly those widths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ecomp.core.initialiser import pruned_width
from ecomp.nets.structure import Structure, l1_ranking, prune

BISECTION_STEPS = 40
MAX_MOVES = 200            # single-unit moves after the bisection


@dataclass
class WidthSpace:
    """The widths of ``parent``'s prunable groups under a MACs budget ``macs`` +- ``tolerance``
    (both relative to the parent's MACs); fractions are never drawn or repaired below ``floor``."""
    parent: Structure
    macs: float = 0.5
    tolerance: float = 0.02
    floor: float = 0.05
    ranking: list[Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ranking = [r.cpu() for r in l1_ranking(self.parent)]
        self.units = tuple(self.parent.units)
        self.blueprint = self.parent.blueprint()
        self.parent_macs = self.parent.size("macs")
        self._cache: dict[tuple[int, ...], float] = {}

    @property
    def groups(self) -> int:
        return len(self.units)

    # -- a keep vector and what it stands for ------------------------------------------------------
    def widths(self, keep: Tensor) -> tuple[int, ...]:
        """Units kept per group: ``pruned_width(units[g], keep[g])``."""
        return tuple(pruned_width(u, float(f)) for u, f in zip(self.units, keep.tolist()))

    def keep_of(self, widths: tuple[int, ...]) -> Tensor:
        """The keep vector that stands for exactly ``widths``."""
        return torch.tensor([w / u for w, u in zip(widths, self.units)], dtype=torch.float64)

    def macs_ratio(self, widths: tuple[int, ...]) -> float:
        """MACs of a network of these widths relative to the parent's."""
        if widths not in self._cache:
            self._cache[widths] = self.blueprint.with_units(tuple(widths)).size("macs") / self.parent_macs
        return self._cache[widths]

    def within(self, widths: tuple[int, ...]) -> bool:
        return abs(self.macs_ratio(widths) - self.macs) <= self.tolerance + 1e-12

    def kept_units(self, widths: tuple[int, ...]) -> list[Tensor]:
        """Per group: the indices of the ``widths[g]`` best units by L1, sorted."""
        return [r[:w].sort().values for r, w in zip(self.ranking, widths)]

    def network(self, widths: tuple[int, ...]) -> Structure:
        """The parent pruned to ``widths`` (L1-ranked units, as ``l1_prune``)."""
        dev = self.parent.layers[0][0].device
        return prune(self.parent, [k.to(dev) for k in self.kept_units(widths)])

    # -- the budget -----------------------------------------------------------------------------------
    def repair(self, keep: Tensor) -> Tensor | None:
        """``keep`` moved into the budget (see the module's docstring), or None when it cannot be."""
        keep = keep.to(torch.float64).clamp(self.floor, 1.0)
        def scaled(m: float) -> tuple[int, ...]:
            return self.widths((keep * m).clamp(self.floor, 1.0))

        lo, hi = 0.0, 1.0 / float(keep.min())          # hi: every fraction reaches 1
        for _ in range(BISECTION_STEPS):               # MACs grow with the multiplier
            mid = (lo + hi) / 2
            if self.macs_ratio(scaled(mid)) < self.macs:
                lo = mid
            else:
                hi = mid
        best = min((scaled(lo), scaled(hi)), key=lambda w: abs(self.macs_ratio(w) - self.macs))
        best = self._adjust(best)
        return self.keep_of(best) if self.within(best) else None

    def _adjust(self, widths: tuple[int, ...]) -> tuple[int, ...]:
        """Single-unit moves (one group +-1, at least one unit, at most the parent's) while one
        brings the MACs closer to the target; stops as soon as the budget is met."""
        for _ in range(MAX_MOVES):
            if self.within(widths):
                return widths
            gap = abs(self.macs_ratio(widths) - self.macs)
            moves = [widths[:g] + (widths[g] + d,) + widths[g + 1:] for g in range(self.groups) for d in (-1, 1)
                     if 1 <= widths[g] + d <= self.units[g]]
            nxt = min(moves, key=lambda w: abs(self.macs_ratio(w) - self.macs), default=None)
            if nxt is None or abs(self.macs_ratio(nxt) - self.macs) >= gap:
                return widths
            widths = nxt
        return widths

    def sample(self, generator: torch.Generator, low: float = 0.2, high: float = 1.0,
               tries: int = 100) -> Tensor:
        """EagleEye's draw: every fraction from ``U(low, high)``, then repaired into the budget;
        redrawn when repair rejects it. ``ValueError`` if ``tries`` draws all fail."""
        for _ in range(tries):
            keep = low + (high - low) * torch.rand(self.groups, generator=generator, dtype=torch.float64)
            fixed = self.repair(keep)
            if fixed is not None:
                return fixed
        raise ValueError(f"no keep vector meets MACs {self.macs} +- {self.tolerance} of the parent's "
                         f"after {tries} draws")
