"""``method=bee_colony``: ABCPruner's search (Lin et al., IJCAI 2020), an artificial bee colony
(Karaboga 2005) over keep vectors, scored by a cheap score instead of ABCPruner's few epochs of
training per candidate.

The colony holds ``sources`` keep vectors (food sources), drawn as ``random_search`` draws them.
Each of ``cycles`` rounds:

* employed bees: every source in turn tries one neighbour (:func:`ecomp.widths.operators.neighbour`:
  one group moved relative to another source), repaired into the MACs budget, and is replaced by it
  when it scores higher (greedy); otherwise its trial count grows;
* onlooker bees: ``sources`` more neighbours of sources drawn by the roulette on standardised
  scores (``temperature``), the better sources visited more;
* one scout: the source with the most failed trials, once it reaches ``limit``, is abandoned for a
  fresh draw.

A neighbour that repair cannot bring into the budget counts as a failed trial, unscored. At most
``sources + cycles x (2 sources + 1)`` candidates are scored; then the ``top_k`` best-scored ever
seen are fine-tuned as in :mod:`ecomp.methods.width_search`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ecomp.errors import finite, invalid
from ecomp.methods.base import Problem
from ecomp.methods.width_search import Candidate, WidthSearch
from ecomp.widths.operators import neighbour, onlookers
from ecomp.widths.space import WidthSpace


@dataclass
class BeeColony(WidthSearch):
    sources: int = 6
    cycles: int = 2
    limit: int = 2
    temperature: float = 1.0

    name = "bee_colony"
    settings = ("sources", "cycles", "limit", "temperature", *WidthSearch.search_settings)

    def check(self) -> None:
        super().check()
        if not isinstance(self.sources, int) or self.sources < 2:
            raise invalid("method.sources", self.sources, "an integer >= 2 (a move needs another source)")
        for key in ("cycles", "limit"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise invalid(f"method.{key}", getattr(self, key), "an integer >= 0")
        if not finite(self.temperature) or self.temperature <= 0:
            raise invalid("method.temperature", self.temperature, "a number > 0")

    def search(self, space: WidthSpace, score, problem: Problem) -> list[Candidate]:
        gen, out = problem.generator, []

        def scored(keep: torch.Tensor, cycle: int) -> float:
            widths = space.widths(keep)
            out.append(Candidate(widths, space.macs_ratio(widths), score(widths), cycle))
            return out[-1].score

        keeps = torch.stack([space.sample(gen, self.keep_low) for _ in range(self.sources)])   # (sources, G)
        scores = torch.tensor([scored(k, 0) for k in keeps], dtype=torch.float64)
        trials = [0] * self.sources

        def visit(i: int, cycle: int) -> None:
            moved = space.repair(neighbour(keeps, i, gen, space.floor))
            s = None if moved is None else scored(moved, cycle)
            if s is not None and s > scores[i]:
                keeps[i], scores[i], trials[i] = moved, s, 0
            else:
                trials[i] += 1

        for cycle in range(1, self.cycles + 1):
            for i in range(self.sources):                                   # employed bees
                visit(i, cycle)
            for i in onlookers(scores, self.sources, gen, self.temperature).tolist():
                visit(i, cycle)
            tired = max(range(self.sources), key=lambda i: trials[i])         # one scout
            if trials[tired] >= self.limit:
                keeps[tired] = space.sample(gen, self.keep_low)
                scores[tired], trials[tired] = scored(keeps[tired], cycle), 0
        return out
