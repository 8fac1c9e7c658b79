"""``method=scratch``: the pruned architecture trained from a fresh initialisation with the
parent's own recipe (epochs, Adam learning rate, batch size), on every training image except the
run's validation images. It asks whether the parent's knowledge is worth anything at this size."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ecomp.errors import finite, invalid
from ecomp.core.initialiser import pruned_width
from ecomp.nets.parent import train
from ecomp.methods.base import Method, Outcome, Problem


@dataclass
class Scratch(Method):
    keep: float

    name = "scratch"
    settings = ("keep",)

    def check(self) -> None:
        if not finite(self.keep) or not 0 < self.keep <= 1:
            raise invalid("method.keep", self.keep, "a fraction in (0, 1]")

    def run(self, problem: Problem) -> Outcome:
        arch = problem.recipe.arch                     # every prunable layer: neurons, channels
        small = arch.with_units(tuple(pruned_width(u, self.keep) for u in arch.units))
        # The run's seed, not the parent's: each seed is a different initialisation.
        spec = replace(problem.recipe, arch=small, seed=problem.seed)
        return Outcome(train(spec, problem.data.without_val()))
