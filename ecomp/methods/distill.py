"""``method=distill``: the pruned network trained on the parent's softened outputs (knowledge
distillation at temperature ``method.temperature``) for ``method.epochs`` on the training subset.
``method.alpha`` < 1 mixes in the labels' cross-entropy (1 = soft targets only)."""

from __future__ import annotations

from dataclasses import dataclass

from ecomp.errors import finite, invalid
from ecomp.nets.training import distillation_loss
from ecomp.methods.base import Problem
from ecomp.methods.l1_finetune import L1Finetune


@dataclass
class Distill(L1Finetune):
    temperature: float = 4.0
    alpha: float = 1.0

    name = "distill"
    settings = ("keep", "importance", "epochs", "lr", "temperature", "alpha")

    def check(self) -> None:
        super().check()
        if not finite(self.temperature) or self.temperature <= 0:
            raise invalid("method.temperature", self.temperature, "a number > 0")
        if not finite(self.alpha) or not 0 <= self.alpha <= 1:
            raise invalid("method.alpha", self.alpha, "a weight in [0, 1]")

    def loss(self, problem: Problem):
        teacher = problem.parent.to_module().eval()
        return distillation_loss(teacher, self.temperature, self.alpha)
