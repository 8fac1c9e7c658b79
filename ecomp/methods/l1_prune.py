"""``method=l1_prune``: structured pruning of the parent to ``method.keep`` of every hidden layer, no training."""

from __future__ import annotations

from dataclasses import dataclass
from ecomp.errors import finite, invalid
from ecomp.methods.base import Method, Outcome, Problem
from ecomp.methods.pruning import IMPORTANCES, NEEDS_GRADIENTS, structured_prune


@dataclass
class L1Prune(Method):
    keep: float
    importance: str = "l1"

    name = "l1_prune"
    settings = ("keep", "importance")
    hints = {"finetune_epochs": "fine-tuning after pruning is method=l1_finetune"}

    def check(self) -> None:
        if not finite(self.keep) or not 0 < self.keep <= 1:
            raise invalid("method.keep", self.keep, "a fraction in (0, 1]")
        if self.importance not in IMPORTANCES:
            raise invalid("method.importance", self.importance, f"one of {', '.join(IMPORTANCES)}")

    def pruned(self, problem: Problem):
        t = problem.data.train
        data = (t.x.to(problem.device), t.y.to(problem.device)) if self.importance in NEEDS_GRADIENTS else None
        return structured_prune(problem.parent, self.keep, self.importance, data)

    def run(self, problem: Problem) -> Outcome:
        return Outcome(self.pruned(problem))
