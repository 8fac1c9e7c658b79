"""``method=l1_finetune``: ``l1_prune``, then ``method.epochs`` of Adam on the run's training subset
(the images EComp evolves on), in batches of ``data.batch_size``."""

from __future__ import annotations

from dataclasses import dataclass

from ecomp.errors import finite, invalid
from ecomp.nets.training import cross_entropy, fine_tune
from ecomp.methods.base import Outcome, Problem
from ecomp.methods.l1_prune import L1Prune


@dataclass
class L1Finetune(L1Prune):
    epochs: int = 1
    lr: float = 1e-3

    name = "l1_finetune"
    settings = ("keep", "importance", "epochs", "lr")

    def check(self) -> None:
        super().check()
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise invalid("method.epochs", self.epochs, "an integer >= 0")
        if not finite(self.lr) or self.lr <= 0:
            raise invalid("method.lr", self.lr, "a number > 0")

    def loss(self, problem: Problem):
        return cross_entropy

    def run(self, problem: Problem) -> Outcome:
        pruned = self.pruned(problem)
        t, dev = problem.data.train, problem.device
        tuned = fine_tune(pruned, t.x.to(dev), t.y.to(dev), self.epochs, self.lr, problem.batch_size,
                          problem.generator, self.loss(problem))
        return Outcome(tuned, stages={"pruned": pruned})
