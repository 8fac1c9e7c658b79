"""Multiplicative weight mutation."""

from __future__ import annotations

import torch

from .population import Population


@torch.no_grad()
def mutate_(pop: Population, rate: float, low: float, high: float, generator: torch.Generator) -> list[int]:
    """In place: each individual, with probability ``rate``, has every weight (not the
    biases) of every layer multiplied by its own factor drawn from ``U(low, high)``.

    In place because it runs on children that :func:`recombine` has just created
    and that nothing else references. Returns the indices of the mutated individuals.
    """
    chosen = (torch.rand(pop.size, generator=generator) < rate).nonzero().flatten().tolist()
    for i in chosen:
        for w, _ in pop.individual(i):
            factors = torch.empty(w.shape, dtype=w.dtype).uniform_(low, high, generator=generator)
            w.mul_(factors.to(w.device))
    return chosen
