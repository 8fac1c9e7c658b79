"""Multiplicative weight mutation, on a population of any layer kind."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ecomp.kernels.backend import Backend, for_tensor
from ecomp.nets.population import Population, index_ranges
from ecomp.nets.structure import Individuals


@dataclass
class MutationSpec:
    """``operators.mutation``: each child, with probability ``rate``, has every weight multiplied
    by a factor from ``U(low, high)`` (this dataclass is the config's schema too)."""
    rate: float = 0.01
    low: float = 0.9
    high: float = 1.1


@torch.no_grad()
def mutate_(pop: Individuals, rate: float, low: float, high: float, generator: torch.Generator,
            gathered: bool | None = None, backend: Backend | None = None) -> list[int]:
    """In place: each individual, with probability ``rate``, has every weight (not the
    biases) of every layer multiplied by its own factor drawn from ``U(low, high)``.

    In place because it runs on children that :func:`recombine` has just created
    and that nothing else references. Returns the indices of the mutated individuals.

    The factors come from ``generator`` (a CPU generator) individual by individual, layer by
    layer. ``gathered`` (None = as the backend says: on a GPU; a packed population only): draw them in one call, copy them to the device
    once, and multiply each layer of all the mutated individuals through one index tensor,
    instead of a draw, a copy and a product per individual and layer. The CPU generator's
    float32 draws concatenate (one draw of ``a + b`` values = a draw of ``a`` then of ``b``;
    tested), so both give the same factors and the same weights, bit for bit.
    """
    chosen = (torch.rand(pop.size, generator=generator) < rate).nonzero().flatten().tolist()
    if not chosen:
        return chosen
    if pop.packed and (gathered if gathered is not None else (backend or for_tensor(pop.first_w)).gathered):
        _mutate_gathered(pop, chosen, low, high, generator)
        return chosen
    for i in chosen:
        for w, _ in pop.individual(i):
            factors = torch.empty(w.shape, dtype=w.dtype).uniform_(low, high, generator=generator)
            w.mul_(factors.to(w.device))
    return chosen


def _mutate_gathered(pop: Population, chosen: list[int], low: float, high: float,
                     generator: torch.Generator) -> None:
    pop.check_live()
    in_dim, dev = pop.first_w.shape[1], pop.device
    # (flat storage, start, length) of every chosen individual's weights, individual-major as drawn
    blocks = []
    for i in chosen:
        s = pop.slot(i)
        blocks.append([(pop.first_w, pop.offsets[s] * in_dim, pop.widths[i][0] * in_dim)]
                      + [(pop.layer_w[l], pop.w_offsets[l][s], pop.w_offsets[l][s + 1] - pop.w_offsets[l][s])
                         for l in range(len(pop.layer_w))])
    sizes = [n for ind in blocks for _, _, n in ind]
    factors = torch.empty(sum(sizes), dtype=pop.first_w.dtype).uniform_(low, high, generator=generator).to(dev)
    drawn_at = [0, *itertools.accumulate(sizes[:-1])]               # where each block's factors begin
    n_layers = len(blocks[0])
    for l in range(n_layers):
        storage = blocks[0][l][0]
        flat = storage.view(-1)                                     # packed storage is contiguous
        dst = index_ranges([ind[l][1] for ind in blocks], [ind[l][2] for ind in blocks], dev)
        src = index_ranges([drawn_at[k * n_layers + l] for k in range(len(blocks))], [ind[l][2] for ind in blocks], dev)
        flat.index_copy_(0, dst, flat.index_select(0, dst) * factors.index_select(0, src))
