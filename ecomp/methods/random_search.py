"""``method=random_search``: EagleEye's search (Li et al., ECCV 2020). ``candidates`` keep vectors
drawn from ``U(keep_low, 1)`` per group and repaired into the MACs budget, each scored by
``score`` (adaptive BatchNorm by default), the ``top_k`` best fine-tuned, the best of them on the
validation split returned (:mod:`ecomp.methods.width_search`)."""

from __future__ import annotations

from dataclasses import dataclass

from ecomp.errors import invalid
from ecomp.methods.base import Problem
from ecomp.methods.width_search import Candidate, WidthSearch
from ecomp.widths.space import WidthSpace


@dataclass
class RandomSearch(WidthSearch):
    candidates: int = 30

    name = "random_search"
    settings = ("candidates", *WidthSearch.search_settings)

    def check(self) -> None:
        super().check()
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise invalid("method.candidates", self.candidates, "an integer >= 1")

    def search(self, space: WidthSpace, score, problem: Problem) -> list[Candidate]:
        out = []
        for _ in range(self.candidates):
            widths = space.widths(space.sample(problem.generator, self.keep_low))
            out.append(Candidate(widths, space.macs_ratio(widths), score(widths)))
        return out
