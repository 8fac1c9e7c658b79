"""The paper's operators carried over to keep vectors: pure functions on ``(pop, G)`` tensors.

- Selection: the paper's softmax roulette with its temperature and elite levers
  (:class:`ecomp.core.selection.Selection`), on *standardised* scores (zero mean, unit standard
  deviation within the generation), so one temperature means the same for every score: an
  accuracy moves in hundredths, a t-SNE KL in units.
- Crossover: single cut over the group index. A pair ``(a, b)`` and a cut ``c`` in
  ``1 .. G - 1`` give ``a[:c] ++ b[c:]`` and ``b[:c] ++ a[c:]`` (with one group, copies).
- Mutation: each child, with probability ``rate``, has every fraction multiplied by its own
  factor from ``U(low, high)`` (the paper's rule for weights), clamped to ``[floor, 1]``.
- The bee colony's moves (``method=bee_colony``): one group of a source moved relative to another
  source, and the onlookers' choice of sources (the same roulette).

Every draw comes from the caller's CPU generator, in a fixed order, so a seed gives one history.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ecomp.core.selection import Selection, elites, roulette_draws


def standardised(scores: Tensor) -> Tensor:
    """``(pop,)`` scores as z-scores (all zero when the scores are all equal)."""
    s = scores.to(torch.float64)
    sd = s.std(unbiased=False)
    return torch.zeros_like(s) if sd == 0 else (s - s.mean()) / sd


def select(scores: Tensor, selection: Selection, generator: torch.Generator) -> tuple[list[int], Tensor]:
    """``(elite indices, (P, 2) mating pairs)`` with ``P = (pop - elite) // 2``."""
    fitness = standardised(scores)
    return elites(fitness, selection.elite), selection.pairs(fitness, generator)


def crossover(keeps: Tensor, pairs: Tensor, generator: torch.Generator) -> Tensor:
    """``(2P, G)`` children of ``keeps`` ``(pop, G)``: pair ``p`` gives rows ``2p`` and ``2p + 1``."""
    n_groups = keeps.shape[1]
    a, b = keeps[pairs[:, 0]], keeps[pairs[:, 1]]                           # (P, G)
    if n_groups < 2:
        return torch.stack([a, b], 1).reshape(-1, n_groups)
    cuts = torch.randint(1, n_groups, (pairs.shape[0],), generator=generator)  # (P,)
    left = torch.arange(n_groups).view(1, -1) < cuts.view(-1, 1)           # (P, G): True before the cut
    first, second = torch.where(left, a, b), torch.where(left, b, a)
    return torch.stack([first, second], 1).reshape(-1, n_groups)


def mutate(keeps: Tensor, rate: float, low: float, high: float, generator: torch.Generator,
           floor: float = 0.0) -> Tensor:
    """``(pop, G)`` mutated copies (see the module's docstring); the input is not changed."""
    chosen = torch.rand(keeps.shape[0], generator=generator) < rate                 # (pop,)
    factors = low + (high - low) * torch.rand(keeps.shape, generator=generator, dtype=torch.float64)
    out = torch.where(chosen.view(-1, 1), keeps.to(torch.float64) * factors, keeps.to(torch.float64))
    return out.clamp(floor, 1.0)


def next_generation(keeps: Tensor, scores: Tensor, selection: Selection, rate: float, low: float, high: float,
                    generator: torch.Generator, floor: float = 0.0) -> Tensor:
    """The elites unchanged, then mutated children of roulette-drawn pairs: ``(pop, G)`` (unrepaired)."""
    keep_elite, pairs = select(scores, selection, generator)
    children = mutate(crossover(keeps, pairs, generator), rate, low, high, generator, floor)
    return torch.cat([keeps[keep_elite].to(torch.float64), children])


# -- the bee colony (ABCPruner) -------------------------------------------------------------------------
def neighbour(keeps: Tensor, i: int, generator: torch.Generator, floor: float = 0.0) -> Tensor:
    """Artificial bee colony's move (Karaboga 2005, as ABCPruner searches channel counts): source
    ``i`` of ``keeps`` ``(n, G)`` with one group ``j`` moved towards or away from another source
    ``k != i``: ``x[i, j] + phi * (x[i, j] - x[k, j])``, ``phi ~ U(-1, 1)``, clamped to
    ``[floor, 1]``. Draws, in order: ``j``, then ``k`` (uniform over the other sources), then
    ``phi``. A new ``(G,)`` float64 tensor; ``keeps`` is not changed."""
    n, n_groups = keeps.shape
    j = int(torch.randint(n_groups, (1,), generator=generator))
    k = int(torch.randint(n - 1, (1,), generator=generator))
    k += k >= i                                                      # uniform over the others
    phi = 2.0 * float(torch.rand(1, generator=generator, dtype=torch.float64)) - 1.0
    out = keeps[i].to(torch.float64).clone()
    out[j] = min(1.0, max(floor, float(out[j]) + phi * (float(out[j]) - float(keeps[k, j]))))
    return out


def onlookers(scores: Tensor, n: int, generator: torch.Generator, temperature: float = 1.0) -> Tensor:
    """``(n,)`` sources the onlooker bees visit: the paper's roulette on standardised scores."""
    return roulette_draws(standardised(scores), n, generator, temperature)
