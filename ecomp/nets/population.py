"""A population of feed-forward networks of different widths, laid out for speed.

All first layers are packed into one ``(sum of widths, input)`` matrix so the
whole population's first layer is a single GEMM on the shared input batch
(it holds most of the FLOPs). Each later layer is packed the same way:
every individual's ``(out, in)`` weights, flattened at their true sizes (no zero
padding), one after the other in one buffer, and its biases in another. So
crossover reads and writes each layer of a generation as one block of memory,
and a population of one architecture is a ``(pop, out, in)`` view of it.

Storage slots: individual ``i`` is stored at slot ``slot(i)``. That is ``i`` unless
``slots`` is given, which only a population of one architecture may have (all slots
are then alike): crossover in place (:func:`ecomp.core.recombination.recombine`) leaves
most children in their bulk parent's slot instead of copying them into child order.
``offsets``, ``w_offsets``, ``b_offsets`` and ``stacked`` are in slot order; every
per-individual accessor (``first``, ``rest``, ``individual``) and the forward pass's
(:mod:`ecomp.kernels.forward`) results are in individual order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar
from itertools import accumulate

import torch
from torch import Tensor

from ecomp.nets.mlp import MLP
from ecomp.nets.sizes import size
from ecomp.nets.structure import Layers


@dataclass
class Population:
    widths: list[tuple[int, ...]]          # hidden widths of each individual
    first_w: Tensor                        # (sum_i widths[i][0], input) packed first-layer weights
    first_b: Tensor                        # (sum_i widths[i][0],)
    layer_w: list[Tensor]                  # per later layer: every individual's (out, in) weights, flat
    layer_b: list[Tensor]                  # per later layer: every individual's biases, flat
    offsets: list[int] = field(init=False)  # row of first_w where slot s starts (individual s, without slots)
    w_offsets: list[list[int]] = field(init=False)  # per later layer: where slot s starts in layer_w
    b_offsets: list[list[int]] = field(init=False)
    slots: list[int] | None = None          # storage slot of individual i (None: slot i)
    packed: ClassVar[bool] = True           # layers packed across individuals (the MLP's fast paths)
    retired: bool = field(init=False, default=False, repr=False)   # storage handed to its children
    _rest: list[Layers] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.slots is not None:
            if sorted(self.slots) != list(range(self.size)):
                raise ValueError(f"slots must be a permutation of 0..{self.size - 1}")
            if not self.uniform:
                raise ValueError("only a population of one architecture can store individuals out of order")
            if self.slots == list(range(self.size)):
                self.slots = None
        self.offsets = [0, *accumulate(w[0] for w in self.widths)]
        assert self.first_w.shape[0] == self.offsets[-1], "packed first layer does not match widths"
        self.w_offsets, self.b_offsets = [], []
        n_later, classes = len(self.layer_w), self.classes
        for l in range(n_later):
            if l + 1 < n_later:
                w_sizes = [w[l + 1] * w[l] for w in self.widths]
                b_sizes = [w[l + 1] for w in self.widths]
            else:
                w_sizes = [classes * w[l] for w in self.widths]
                b_sizes = [classes] * self.size
            self.w_offsets.append([0, *accumulate(w_sizes)])
            self.b_offsets.append([0, *accumulate(b_sizes)])
            assert self.layer_w[l].numel() == self.w_offsets[l][-1], f"packed layer {l + 1} does not match widths"
            assert self.layer_b[l].numel() == self.b_offsets[l][-1], f"packed biases {l + 1} do not match widths"

    @property
    def size(self) -> int:
        return len(self.widths)

    @property
    def device(self) -> torch.device:
        return self.first_w.device

    @property
    def classes(self) -> int:
        return self.layer_b[-1].numel() // self.size

    @property
    def in_features(self) -> int:
        return self.first_w.shape[1]

    @property
    def uniform(self) -> bool:
        """Every individual has the same widths (one architecture)."""
        return all(w == self.widths[0] for w in self.widths)

    def slot(self, i: int) -> int:
        """Storage slot of individual ``i``."""
        return i if self.slots is None else self.slots[i]

    def slot_index(self) -> Tensor | None:
        """``(pop,)`` int64 slots in individual order, or None when slot ``i`` holds individual ``i``."""
        return None if self.slots is None else torch.tensor(self.slots, device=self.device)

    def check_live(self) -> None:
        """Raise if this population's storage was handed to its children (:meth:`retire`)."""
        if self.retired:
            raise RuntimeError("this population's storage was reused by its children (crossover in place)")

    def retire(self) -> None:
        """Crossover in place wrote the children over this storage: every later access raises."""
        self.retired = True

    def layer_shape(self, i: int, l: int) -> tuple[int, int]:
        """``(out, in)`` of individual ``i``'s later layer ``l`` (layer ``l + 1`` of the network)."""
        w = self.widths[i]
        return (w[l + 1] if l + 1 < len(w) else self.classes), w[l]

    def first(self, i: int) -> tuple[Tensor, Tensor]:
        self.check_live()
        s = self.slot(i)
        o, h = self.offsets[s], self.widths[i][0]
        return self.first_w[o:o + h], self.first_b[o:o + h]

    @property
    def rest(self) -> list[Layers]:
        """Per individual: its layers after the first, as views into the packed buffers."""
        self.check_live()
        if self._rest is None:
            self._rest = [[self._layer(i, l) for l in range(len(self.layer_w))] for i in range(self.size)]
        return self._rest

    def _layer(self, i: int, l: int) -> tuple[Tensor, Tensor]:
        wo, bo, s = self.w_offsets[l], self.b_offsets[l], self.slot(i)
        out = bo[s + 1] - bo[s]
        return self.layer_w[l][wo[s]:wo[s + 1]].view(out, self.widths[i][l]), self.layer_b[l][bo[s]:bo[s + 1]]

    def stacked(self, l: int) -> tuple[Tensor, Tensor]:
        """Later layer ``l`` of a population of one architecture as ``(pop, out, in)``, ``(pop, out)``
        views, in slot order (individual ``i`` at ``slot(i)``)."""
        self.check_live()
        out, inp = self.layer_shape(0, l)
        return self.layer_w[l].view(self.size, out, inp), self.layer_b[l].view(self.size, out)

    def individual(self, i: int) -> Layers:
        """Individual ``i`` as ``(weight, bias)`` pairs (views, not copies)."""
        self.check_live()
        later = self._rest[i] if self._rest is not None else [self._layer(i, l) for l in range(len(self.layer_w))]
        return [self.first(i), *later]

    def network(self, i: int) -> MLP:
        """Individual ``i`` as a network (its layers are views, not copies)."""
        return MLP(self.individual(i))

    def sizes(self, kind: str) -> Tensor:
        """(pop,) float64 :func:`ecomp.nets.sizes.size` of each individual (``units``, ``params`` or ``macs``)."""
        dims = self.first_w.shape[1]
        return torch.tensor([size((dims, *w, self.classes), kind) for w in self.widths], dtype=torch.float64)

    def take(self, indices: list[int]) -> "Population":
        """A new population of individuals ``indices`` (copies, in that order, stored in order):
        one ``index_select`` per buffer through index ranges, no per-individual tensor work."""
        self.check_live()
        dev, slots = self.device, [self.slot(i) for i in indices]
        widths = [self.widths[i] for i in indices]
        rows = index_ranges([self.offsets[s] for s in slots], [w[0] for w in widths], dev)
        def later(buffers: list[Tensor], offsets: list[list[int]]) -> list[Tensor]:
            return [buf.index_select(0, index_ranges([o[s] for s in slots], [o[s + 1] - o[s] for s in slots], dev))
                    for buf, o in zip(buffers, offsets)]
        return Population(widths=widths, first_w=self.first_w.index_select(0, rows),
                          first_b=self.first_b.index_select(0, rows),
                          layer_w=later(self.layer_w, self.w_offsets), layer_b=later(self.layer_b, self.b_offsets))

    @classmethod
    def concat(cls, pops: list["Population"]) -> "Population":
        """The individuals of ``pops`` one population after the other, in one new storage."""
        pops = [p if p.slots is None else p.take(list(range(p.size))) for p in pops]
        return cls(widths=[w for p in pops for w in p.widths], first_w=torch.cat([p.first_w for p in pops]),
                   first_b=torch.cat([p.first_b for p in pops]),
                   layer_w=[torch.cat([p.layer_w[l] for p in pops]) for l in range(len(pops[0].layer_w))],
                   layer_b=[torch.cat([p.layer_b[l] for p in pops]) for l in range(len(pops[0].layer_b))])

    @classmethod
    def from_individuals(cls, individuals: list[Layers]) -> "Population":
        firsts = [ind[0] for ind in individuals]
        n_later = len(individuals[0]) - 1
        return cls(
            widths=[tuple(w.shape[0] for w, _ in ind[:-1]) for ind in individuals],
            first_w=torch.cat([w for w, _ in firsts]),
            first_b=torch.cat([b for _, b in firsts]),
            layer_w=[torch.cat([ind[l + 1][0].reshape(-1) for ind in individuals]) for l in range(n_later)],
            layer_b=[torch.cat([ind[l + 1][1] for ind in individuals]) for l in range(n_later)],
        )


def index_ranges(starts: list[int], lengths: list[int], device: torch.device | str = "cpu") -> Tensor:
    """The concatenation of ``arange(start, start + length)`` over the pairs, as one int64 tensor
    built without a per-range loop (for gathers on packed storage)."""
    total = sum(lengths)
    s = torch.tensor(starts, dtype=torch.int64, device=device)
    n = torch.tensor(lengths, dtype=torch.int64, device=device)
    before = torch.cumsum(n, 0) - n                                 # where each range begins in the result
    return torch.arange(total, device=device) + torch.repeat_interleave(s - before, n, output_size=total)
