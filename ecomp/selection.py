"""Softmax roulette selection."""

from __future__ import annotations

import torch
from torch import Tensor


def selection_probabilities(fitness: Tensor) -> Tensor:
    """Softmax of the fitness values (no temperature), in float64 so huge weights stay finite."""
    f = fitness.to(torch.float64)
    if not torch.isfinite(f).all():
        raise FloatingPointError(f"fitness has non-finite values: {f[~torch.isfinite(f)].tolist()[:5]}")
    return torch.softmax(f, 0)


def select_pairs(fitness: Tensor, generator: torch.Generator) -> Tensor:
    """Mating pairs ``(pop // 2, 2)``: ``pop`` draws with replacement, shuffled, paired in order."""
    pop = fitness.shape[0]
    probs = selection_probabilities(fitness).cpu()
    drawn = torch.multinomial(probs, pop, replacement=True, generator=generator)   # (pop,)
    shuffled = drawn[torch.randperm(pop, generator=generator)]
    return shuffled.view(pop // 2, 2)
