"""``method=evolve_widths``: a genetic search over keep vectors with the paper's operators
(:mod:`ecomp.widths.operators`: roulette on standardised scores with ``temperature`` and
``elite``, single-cut crossover over the group index, multiplicative mutation). The first
generation is ``population`` draws as ``random_search``'s; every child is repaired into the MACs
budget (a child repair cannot place is replaced by a fresh draw); the fitness is ``score``.
After ``generations`` the ``top_k`` best-scored candidates ever seen are fine-tuned as in
:mod:`ecomp.methods.width_search`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ecomp.core.selection import Selection
from ecomp.errors import finite, invalid
from ecomp.methods.base import Problem
from ecomp.methods.width_search import Candidate, WidthSearch
from ecomp.widths.operators import next_generation
from ecomp.widths.space import WidthSpace


@dataclass
class EvolveWidths(WidthSearch):
    population: int = 10
    generations: int = 3
    temperature: float = 1.0
    elite: int = 2
    mutation_rate: float = 0.5
    mutation_low: float = 0.8
    mutation_high: float = 1.2

    name = "evolve_widths"
    settings = ("population", "generations", "temperature", "elite", "mutation_rate", "mutation_low",
                "mutation_high", *WidthSearch.search_settings)

    def check(self) -> None:
        super().check()
        if not isinstance(self.population, int) or self.population < 2:
            raise invalid("method.population", self.population, "an integer >= 2")
        if not isinstance(self.generations, int) or self.generations < 0:
            raise invalid("method.generations", self.generations, "an integer >= 0")
        if not finite(self.temperature) or self.temperature <= 0:
            raise invalid("method.temperature", self.temperature, "a number > 0")
        if not isinstance(self.elite, int) or not 0 <= self.elite < self.population \
                or (self.population - self.elite) % 2:
            raise invalid("method.elite", self.elite, f"an integer in [0, {self.population}) with population - elite even")
        if not finite(self.mutation_rate) or not 0 <= self.mutation_rate <= 1:
            raise invalid("method.mutation_rate", self.mutation_rate, "a probability in [0, 1]")
        if not finite(self.mutation_low) or not finite(self.mutation_high) or not 0 < self.mutation_low <= self.mutation_high:
            raise invalid("method.mutation_low", self.mutation_low,
                          f"a number in (0, method.mutation_high={self.mutation_high}]")

    def search(self, space: WidthSpace, score, problem: Problem) -> list[Candidate]:
        gen, out = problem.generator, []
        selection = Selection("roulette", self.temperature, 2, self.elite)
        keeps = torch.stack([space.sample(gen, self.keep_low) for _ in range(self.population)])   # (pop, G)
        for generation in range(self.generations + 1):
            widths = [space.widths(k) for k in keeps]
            scores = [score(w) for w in widths]
            out += [Candidate(w, space.macs_ratio(w), s, generation) for w, s in zip(widths, scores)]
            if generation == self.generations:
                break
            children = next_generation(keeps, torch.tensor(scores), selection, self.mutation_rate,
                                       self.mutation_low, self.mutation_high, gen, space.floor)
            repaired = [space.repair(k) for k in children]
            keeps = torch.stack([k if k is not None else space.sample(gen, self.keep_low) for k in repaired])
        return out
