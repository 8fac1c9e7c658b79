"""A population kept one network per individual: CNNs and residual networks.

Every individual shares the parent's plan (:class:`ecomp.nets.convnet.ConvPlan`,
:class:`ecomp.nets.resnet.ResPlan`) but the units of its groups (``widths[i]``). Its weights are
kept per individual, one ``(weight, bias)`` pair per layer: a convolution's filters do not pack
into one matrix the way an MLP's first layers do (:class:`ecomp.nets.population.Population`),
and the forward passes group the individuals by architecture instead
(:mod:`ecomp.kernels.conv_forward`, :mod:`ecomp.kernels.res_forward`). The accessors match
``Population``'s where the evolution loop and the evaluator use them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ecomp.nets.structure import Blueprint, Layers, Structure


@dataclass
class NetPopulation:
    plan: Blueprint                        # the parent's structure (its units are the parent's)
    members: list[Layers]                  # per individual: one (weight, bias) pair per layer
    slots = None                           # stored in individual order, always (Population's interface)
    packed: ClassVar[bool] = False         # one network per individual, not packed layer buffers
    widths: list[tuple[int, ...]] | None = None   # units of each individual's groups (None: read from members)
    _kept: dict = field(init=False, repr=False, compare=False, default_factory=dict)   # see joined()

    def __post_init__(self) -> None:
        if self.widths is None:
            self.widths = [self.plan.net(m).units for m in self.members]

    def joined(self, layer: int, members: list[int], how: str, make: Callable[[], Any]) -> Any:
        """``make()``, something built from individuals ``members``' weights and biases of
        ``layer`` (their filters concatenated, stacked, ...; ``how`` names it), built once and
        kept while none of those tensors changes in place (their version counters say so): a
        population evaluated on many batches, as the final pick does, joins its weights once
        instead of once per batch."""
        key = (layer, tuple(members), how)
        versions = tuple(t._version for i in members for t in self.members[i][layer])
        kept = self._kept.get(key)
        if kept is None or kept[0] != versions:
            kept = self._kept[key] = (versions, make())
        return kept[1]

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def device(self) -> torch.device:
        return self.members[0][0][0].device

    @property
    def classes(self) -> int:
        return self.plan.classes

    @property
    def in_features(self) -> int:
        return self.plan.features

    @property
    def uniform(self) -> bool:
        widths = self.widths
        return all(w == widths[0] for w in widths)

    def slot_index(self) -> None:
        return None

    def check_live(self) -> None:
        """Crossover here never writes over its parents: always live."""

    def plan_of(self, i: int) -> Blueprint:
        return self.plan.with_units(self.widths[i])

    def individual(self, i: int) -> Layers:
        return self.members[i]

    def network(self, i: int) -> Structure:
        return self.plan.net(self.members[i])

    @torch.no_grad()
    def run_each(self, x: torch.Tensor, features: str = "flat") -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """Logits ``(pop, batch, classes)`` and ``hidden[l][i]``, individual ``i``'s representation
        ``l`` as ``(batch, features)``, one network at a time by its kind's plain ``run``: the
        straightforward forward pass, the oracle of every grouped one."""
        logits = x.new_empty(self.size, x.shape[0], self.classes)
        hidden: list[list[torch.Tensor]] = [[] for _ in range(self.plan.feature_layers)]
        for i in range(self.size):
            out, acts = self.network(i).run(x, features)
            logits[i] = out
            for l, a in enumerate(acts):
                hidden[l].append(a)
        return logits, hidden

    def sizes(self, kind: str) -> Tensor:
        """(pop,) float64 size of each individual (``units``, ``params`` or ``macs``)."""
        return torch.tensor([self.plan.with_units(w).size(kind) for w in self.widths], dtype=torch.float64)

    def with_members(self, members: list[Layers], widths: list[tuple[int, ...]] | None = None) -> "NetPopulation":
        """A population of the same plan holding ``members``; ``widths``, their units where the
        caller knows them (crossover's children have their bulk parents')."""
        return NetPopulation(self.plan, members, widths)

    def take(self, indices: list[int]) -> "NetPopulation":
        """Copies of individuals ``indices``, in that order."""
        return NetPopulation(self.plan, [[(w.clone(), b.clone()) for w, b in self.members[i]] for i in indices])

    @classmethod
    def concat(cls, pops: list["NetPopulation"]) -> "NetPopulation":
        return cls(pops[0].plan, [m for p in pops for m in p.members])

    def groups(self) -> dict[tuple[int, ...], list[int]]:
        """Individuals by architecture, in order of first appearance."""
        out: dict[tuple[int, ...], list[int]] = {}
        for i, w in enumerate(self.widths):
            out.setdefault(w, []).append(i)
        return out
