"""A population of convolutional networks of one structure and different unit counts.

Every individual shares the parent's :class:`ecomp.nets.convnet.ConvPlan` but the units of its
prunable stages (``widths[i]``). Its weights are kept per individual, one ``(weight, bias)``
pair per stage: a convolution's filters do not pack into one matrix the way an MLP's first
layers do (:class:`ecomp.nets.population.Population`), and the forward pass groups the
individuals by architecture instead (:mod:`ecomp.kernels.conv_forward`). The accessors match
``Population``'s where the evolution loop and the evaluator use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ecomp.nets.convnet import ConvNet, ConvPlan, plan_size
from ecomp.nets.structure import Layers


@dataclass
class ConvPopulation:
    plan: ConvPlan                         # the parent's structure (its units are the parent's)
    members: list[Layers]                  # per individual: one (weight, bias) pair per stage
    slots = None                           # stored in individual order, always (Population's interface)
    packed: ClassVar[bool] = False         # one network per individual, not packed layer buffers
    widths: list[tuple[int, ...]] = field(init=False)   # units of each individual's prunable stages

    def __post_init__(self) -> None:
        self.widths = [tuple(w.shape[0] for w, _ in m[:-1]) for m in self.members]

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

    def plan_of(self, i: int) -> ConvPlan:
        return self.plan.with_units(self.widths[i])

    def individual(self, i: int) -> Layers:
        return self.members[i]

    def network(self, i: int) -> ConvNet:
        return ConvNet(self.plan_of(i), self.members[i])

    def sizes(self, kind: str) -> Tensor:
        """(pop,) float64 size of each individual (``units``, ``params`` or ``macs``)."""
        return torch.tensor([plan_size(self.plan.with_units(w), kind) for w in self.widths], dtype=torch.float64)

    def with_members(self, members: list[Layers]) -> "ConvPopulation":
        """A population of the same plan holding ``members``."""
        return ConvPopulation(self.plan, members)

    def take(self, indices: list[int]) -> "ConvPopulation":
        """Copies of individuals ``indices``, in that order."""
        return ConvPopulation(self.plan, [[(w.clone(), b.clone()) for w, b in self.members[i]] for i in indices])

    @classmethod
    def concat(cls, pops: list["ConvPopulation"]) -> "ConvPopulation":
        return cls(pops[0].plan, [m for p in pops for m in p.members])

    def groups(self) -> dict[tuple[int, ...], list[int]]:
        """Individuals by architecture, in order of first appearance."""
        out: dict[tuple[int, ...], list[int]] = {}
        for i, w in enumerate(self.widths):
            out.setdefault(w, []).append(i)
        return out
