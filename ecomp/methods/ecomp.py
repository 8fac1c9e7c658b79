"""``method=ecomp``: the paper's evolution, exactly as published, and an optional fine-tuning step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..evolution import EComp, MutationSpec
from ..fitness import Evaluator, ReferenceEvaluator, Weights
from ..initialiser import l1_population
from ..training import fine_tune
from .base import Method, Outcome, Problem


@dataclass
class ECompMethod(Method):
    scenario: str
    weights: Weights
    mutation: MutationSpec
    population_size: int
    keep_high: float
    keep_low: float
    perplexity: float
    layers: list[int] | None
    tol: float
    kernels: str
    evaluator: str = "fast"            # fast | reference
    epochs: int = 1                    # evolution epochs (passes over the subset)
    finetune_epochs: int = 0           # post-step: Adam on the subset, 0 = the paper (none)
    lr: float | None = None            # the fine-tuning's learning rate; None: the parent's
    parent_lr: float = 1e-3

    name = "ecomp"
    settings = ("finetune_epochs", "lr")
    optional = ("lr",)                 # null: the parent's learning rate
    groups_unused = ()

    @classmethod
    def from_config(cls, cfg: Any, scenario: str | None = None) -> "ECompMethod":
        f, m, s, kr = cfg.fitness, cfg.operators.mutation, cfg.similarity, cfg.population.keep_ratio
        return cls(scenario=scenario or "".join(f"{w:g}" for w in (f.w_acc, f.w_sim, f.w_comp)),
                   weights=Weights(f.w_acc, f.w_sim, f.w_comp), mutation=MutationSpec(m.rate, m.low, m.high),
                   population_size=cfg.population.size, keep_high=kr.high, keep_low=kr.low,
                   perplexity=s.perplexity, layers=None if s.layers is None else list(s.layers), tol=s.tol,
                   kernels=s.kernels, evaluator=cfg.evolution.evaluator, epochs=cfg.evolution.epochs,
                   finetune_epochs=cfg.method.finetune_epochs or 0, lr=cfg.method.lr, parent_lr=cfg.parent.lr)

    def setting_values(self) -> dict[str, Any]:
        """Nothing beyond the evolution's groups unless it fine-tunes (then the epochs and the rate)."""
        if not self.finetune_epochs:
            return {}
        return {"finetune_epochs": self.finetune_epochs, "lr": self.parent_lr if self.lr is None else self.lr}

    def labels(self) -> dict[str, str]:
        out = {"scenario": self.scenario}
        if self.finetune_epochs:
            out["finetune_epochs"] = str(self.finetune_epochs)
            if self.lr is not None:
                out["lr"] = f"{self.lr:g}"
        return out

    def variant(self) -> str:
        if not self.finetune_epochs:
            return self.scenario
        return f"{self.scenario}+ft{self.finetune_epochs}" + (f" (lr={self.lr:g})" if self.lr is not None else "")

    def run_name(self, seed: int) -> str:
        ft = f"-ft{self.finetune_epochs}" if self.finetune_epochs else ""
        lr = f"-lr{self.lr:g}" if self.finetune_epochs and self.lr is not None else ""
        return f"{self.scenario}{ft}{lr}-seed{seed}"

    def progress_total(self, problem: Problem) -> int:
        n = problem.data.train.x.shape[0] // problem.batch_size
        return self.epochs * n + 1 + n

    def run(self, problem: Problem) -> Outcome:
        x, y, bs, dev = problem.data.train.x, problem.data.train.y, problem.batch_size, problem.device
        batches = [(x[s:s + bs].to(dev), y[s:s + bs].to(dev)) for s in range(0, x.shape[0], bs)]
        parent = [(w.to(dev), b.to(dev)) for w, b in problem.parent]
        pop = l1_population(parent, self.population_size, self.keep_high, self.keep_low)
        cls = ReferenceEvaluator if self.evaluator == "reference" else Evaluator
        evaluator = cls(parent, batches, self.perplexity, self.layers, self.tol, problem.timer, kernels=self.kernels)
        ecomp = EComp(evaluator, self.weights, self.mutation, problem.generator, problem.timer)
        for rec in ecomp.run(pop, self.epochs):
            problem.on_generation(rec)
        best, mean_fit = ecomp.pick_best(on_batch=lambda k: problem.on_step())
        evolved = [(w.detach().cpu().clone(), b.detach().cpu().clone())
                   for w, b in ecomp.population.individual(best)]
        metrics = {"best_mean_fitness": float(mean_fit[best])}
        if not self.finetune_epochs:
            return Outcome(evolved, metrics)
        lr = self.parent_lr if self.lr is None else self.lr
        on_device = [(w.to(dev), b.to(dev)) for w, b in evolved]
        tuned = fine_tune(on_device, x.to(dev), y.to(dev), self.finetune_epochs, lr, bs, problem.generator)
        return Outcome(tuned, metrics, stages={"evolved": evolved})
