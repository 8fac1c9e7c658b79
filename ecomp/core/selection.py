"""Parent selection: softmax roulette (the paper's), tournaments, and elitism.

Every kind draws ``n`` parent indices with replacement from the current
population's fitness, shuffles them and pairs them in order. With the paper's
settings (roulette, temperature 1, no elites) the draws are exactly the
paper's, random number for random number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KINDS = ("roulette", "tournament")


def selection_probabilities(fitness: Tensor, temperature: float = 1.0) -> Tensor:
    """Softmax of ``fitness / temperature``, in float64 so huge weights stay finite."""
    f = fitness.to(torch.float64)
    if not torch.isfinite(f).all():
        raise FloatingPointError(f"fitness has non-finite values: {f[~torch.isfinite(f)].tolist()[:5]}")
    if temperature != 1.0:
        f = f / temperature
        if not torch.isfinite(f).all():
            raise FloatingPointError(f"fitness / temperature overflows at temperature={temperature!r}; use a larger one")
    return torch.softmax(f, 0)


def roulette_draws(fitness: Tensor, n: int, generator: torch.Generator, temperature: float = 1.0) -> Tensor:
    """``(n,)`` indices drawn with probability softmax(fitness / temperature), with replacement."""
    probs = selection_probabilities(fitness, temperature).cpu()
    return torch.multinomial(probs, n, replacement=True, generator=generator)


def tournament_draws(fitness: Tensor, n: int, generator: torch.Generator, size: int) -> Tensor:
    """``(n,)`` winners of ``n`` tournaments, each among ``size`` individuals drawn uniformly
    with replacement; the fittest entrant wins (the first drawn on a tie)."""
    f = fitness.detach().to(torch.float64).cpu()
    entrants = torch.randint(f.shape[0], (n, size), generator=generator)          # (n, size)
    return entrants.gather(1, f[entrants].argmax(1, keepdim=True)).squeeze(1)


def pair_up(drawn: Tensor, generator: torch.Generator) -> Tensor:
    """``(len(drawn) // 2, 2)`` mating pairs: ``drawn`` shuffled and paired in order."""
    n = drawn.shape[0]
    return drawn[torch.randperm(n, generator=generator)].view(n // 2, 2)


def select_pairs(fitness: Tensor, generator: torch.Generator) -> Tensor:
    """The paper's selection: ``pop`` roulette draws, shuffled, paired: ``(pop // 2, 2)``."""
    return pair_up(roulette_draws(fitness, fitness.shape[0], generator), generator)


def elites(fitness: Tensor, k: int) -> list[int]:
    """Indices of the ``k`` fittest individuals, fittest first (the lower index on a tie)."""
    return torch.argsort(fitness.detach().cpu(), descending=True, stable=True)[:k].tolist()


@dataclass
class Selection:
    """``operators.selection``: which parents breed and who passes unchanged (this dataclass is
    the config's schema too: ``ecomp.app.config``)."""
    kind: str = "roulette"            # roulette | tournament
    temperature: float = 1.0          # roulette: softmax(fitness / temperature); 1 = the paper
    tournament_size: int = 2          # tournament: entrants per draw
    elite: int = 0                    # the ``elite`` fittest pass into the next generation unchanged

    def pairs(self, fitness: Tensor, generator: torch.Generator) -> Tensor:
        """``((pop - elite) // 2, 2)`` mating pairs for the next generation."""
        n = fitness.shape[0] - self.elite
        if self.kind == "tournament":
            drawn = tournament_draws(fitness, n, generator, self.tournament_size)
        else:
            drawn = roulette_draws(fitness, n, generator, self.temperature)
        return pair_up(drawn, generator)

    def effective(self) -> dict[str, object]:
        """The settings that shape the draws (a roulette's tournament size does not): the run's
        config hash uses these instead of the whole ``operators.selection`` group."""
        out: dict[str, object] = {"kind": self.kind, "elite": self.elite}
        if self.kind == "tournament":
            out["tournament_size"] = self.tournament_size
        else:
            out["temperature"] = self.temperature
        return out

    def levers(self) -> dict[str, str]:
        """The settings that differ from the paper's, for run names and tags."""
        out = {}
        if self.kind != "roulette":
            out.update(selection=self.kind, tournament_size=str(self.tournament_size))
        elif self.temperature != 1.0:
            out["temperature"] = f"{self.temperature:g}"
        if self.elite:
            out["elite"] = str(self.elite)
        return out
