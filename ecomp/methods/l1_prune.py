"""``method=l1_prune``: structured pruning of the parent to ``method.keep`` of every hidden layer, no training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ecomp.methods.base import Method, Outcome, Problem
from ecomp.methods.pruning import NEEDS_GRADIENTS, structured_prune


@dataclass
class L1Prune(Method):
    keep: float
    importance: str = "l1"

    name = "l1_prune"
    settings = ("keep", "importance")

    @classmethod
    def from_config(cls, cfg: Any, scenario: str | None = None) -> "L1Prune":
        return cls(keep=cfg.method.keep, importance=cfg.method.importance)

    def pruned(self, problem: Problem):
        t = problem.data.train
        data = (t.x.to(problem.device), t.y.to(problem.device)) if self.importance in NEEDS_GRADIENTS else None
        return structured_prune(problem.parent, self.keep, self.importance, data)

    def run(self, problem: Problem) -> Outcome:
        return Outcome(self.pruned(problem))
