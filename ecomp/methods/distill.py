"""``method=distill``: the pruned network trained on the parent's softened outputs (knowledge
distillation at temperature ``method.temperature``) for ``method.epochs`` on the training subset.
``method.alpha`` < 1 mixes in the labels' cross-entropy (1 = soft targets only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ecomp.nets.training import distillation_loss
from ecomp.methods.base import Problem
from ecomp.methods.l1_finetune import L1Finetune


@dataclass
class Distill(L1Finetune):
    temperature: float = 4.0
    alpha: float = 1.0

    name = "distill"
    settings = ("keep", "importance", "epochs", "lr", "temperature", "alpha")

    @classmethod
    def from_config(cls, cfg: Any, scenario: str | None = None) -> "Distill":
        m = cfg.method
        return cls(keep=m.keep, importance=m.importance, epochs=m.epochs, lr=m.lr,
                   temperature=m.temperature, alpha=m.alpha)

    def loss(self, problem: Problem):
        teacher = problem.parent.to_module().eval()
        return distillation_loss(teacher, self.temperature, self.alpha)
