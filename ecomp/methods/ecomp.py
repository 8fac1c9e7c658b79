"""``method=ecomp``: the paper's evolution, exactly as published, and an optional fine-tuning step."""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

from ecomp.core.evolution import EComp
from ecomp.core.mutation import MutationSpec
from ecomp.core.fitness import Evaluator, ReferenceEvaluator, Weights
from ecomp.core.initialiser import l1_population
from ecomp.errors import finite, invalid
from ecomp.measures import measure_class
from ecomp.core.selection import Selection
from ecomp.nets.structure import detached, to_device
from ecomp.nets.training import fine_tune
from ecomp.methods.base import Method, Outcome, Problem


@dataclass
class ECompMethod(Method):
    scenario: str
    weights: Weights
    mutation: MutationSpec
    population_size: int
    keep_high: float
    keep_low: float
    similarity: dict[str, Any]         # the ``similarity`` group's values (its ``_target_`` names the measure)
    layers: list[int] | None
    evaluator: str = "fast"            # fast | reference
    epochs: int = 1                    # evolution epochs (passes over the subset)
    finetune_epochs: int = 0           # post-step: Adam on the subset, 0 = the paper (none)
    lr: float | None = None            # the fine-tuning's learning rate; None: the parent's
    parent_lr: float = 1e-3
    selection: Selection = field(default_factory=Selection)
    compression: str = "units"         # fitness.compression: units (the paper) | params | macs
    features: str = "flat"             # similarity.features: a conv stage's maps flat | pooled per channel
    precision: str = "float32"         # evolution.precision: float32 (the paper) | bfloat16

    name = "ecomp"
    settings = ("finetune_epochs", "lr")
    optional = ("lr",)                 # null: the parent's learning rate
    groups_unused = ()

    @classmethod
    def build(cls, settings: dict[str, Any], context: Mapping[str, Any], scenario: str | None) -> "ECompMethod":
        """Its own keys (``method.finetune_epochs``, ``method.lr``) and the groups it reads:
        ``population``, ``operators``, ``similarity``, ``fitness``, ``evolution`` and ``parent.lr``."""
        f, s, ops = context["fitness"], context["similarity"], context["operators"]
        pop, kr = context["population"], context["population"]["keep_ratio"]
        weights = Weights(f["w_acc"], f["w_sim"], f["w_comp"])
        return cls(scenario=scenario or weights.scenario, weights=weights, mutation=MutationSpec(**ops["mutation"]),
                   population_size=pop["size"], keep_high=kr["high"], keep_low=kr["low"],
                   similarity=dict(s), layers=None if s["layers"] is None else list(s["layers"]),
                   evaluator=context["evolution"]["evaluator"], epochs=context["evolution"]["epochs"],
                   finetune_epochs=settings.get("finetune_epochs") or 0, lr=settings.get("lr"),
                   parent_lr=context["parent"]["lr"], selection=Selection(**ops["selection"]),
                   compression=f["compression"], features=s["features"] or "flat",
                   precision=context["evolution"]["precision"])

    def check(self) -> None:
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise invalid("method.finetune_epochs", self.finetune_epochs, "an integer >= 0")
        if self.lr is not None and (not finite(self.lr) or self.lr <= 0):
            raise invalid("method.lr", self.lr, "a number > 0")

    def progress(self, record) -> dict[str, str]:
        m = record.metrics
        return {"gen": str(record.generation), "acc": f"{m['accuracy_mean']:.3f}",
                "comp": f"{m['compression_mean']:.3f}", "sim": f"{m['similarity_mean']:.3f}"}

    def setting_values(self) -> dict[str, Any]:
        """The selection's effective settings (they replace ``operators.selection`` in the config
        hash), and the fine-tuning's epochs and rate when it fine-tunes."""
        out: dict[str, Any] = {"selection": self.selection.effective()}
        if self.finetune_epochs:
            out.update(finetune_epochs=self.finetune_epochs, lr=self.parent_lr if self.lr is None else self.lr)
        return out

    def levers(self) -> dict[str, str]:
        """Settings beyond the paper's fitness weights that differ from its defaults."""
        out = self.selection.levers()
        if self.measure_name != "tsne":
            out["similarity"] = self.measure_name
        if self.compression != "units":
            out["compression"] = self.compression
        if self.features != "flat":
            out["features"] = self.features
        if self.precision != "float32":
            out["precision"] = self.precision
        return out

    @property
    def measure_name(self) -> str:
        return measure_class(self.similarity["_target_"]).name

    def tags(self) -> dict[str, str]:
        return {"similarity": self.measure_name}

    def labels(self) -> dict[str, str]:
        out = {"scenario": self.scenario, **self.levers()}
        if self.finetune_epochs:
            out["finetune_epochs"] = str(self.finetune_epochs)
            if self.lr is not None:
                out["lr"] = f"{self.lr:g}"
        return out

    def variant(self) -> str:
        """The scenario, ``+ftN`` when fine-tuned, and the levers in brackets: ``121 [elite=2, temperature=0.1]``."""
        out = self.scenario
        if self.finetune_epochs:
            out += f"+ft{self.finetune_epochs}" + (f" (lr={self.lr:g})" if self.lr is not None else "")
        levers = self.levers()
        return out + (" [" + ", ".join(f"{k}={v}" for k, v in sorted(levers.items())) + "]" if levers else "")

    def run_name(self, seed: int) -> str:
        ft = f"-ft{self.finetune_epochs}" if self.finetune_epochs else ""
        lr = f"-lr{self.lr:g}" if self.finetune_epochs and self.lr is not None else ""
        levers = "".join(f"-{k}{v}" for k, v in sorted(self.levers().items()))
        return f"{self.scenario}{levers}{ft}{lr}-seed{seed}"

    def progress_total(self, problem: Problem) -> int:
        n = problem.data.train.x.shape[0] // problem.batch_size
        return self.epochs * n + 1 + n

    def run(self, problem: Problem) -> Outcome:
        x, y, bs, dev = problem.data.train.x, problem.data.train.y, problem.batch_size, problem.device
        batches = [(x[s:s + bs].to(dev), y[s:s + bs].to(dev)) for s in range(0, x.shape[0], bs)]
        parent = to_device(problem.parent, dev)
        pop = l1_population(parent, self.population_size, self.keep_high, self.keep_low)
        cls = ReferenceEvaluator if self.evaluator == "reference" else Evaluator
        measure = measure_class(self.similarity["_target_"]).from_settings(self.similarity, problem.backend)
        evaluator = cls(parent, batches, layers=self.layers, timer=problem.timer, measure=measure,
                        compression=self.compression, features=self.features, precision=self.precision)
        ecomp = EComp(evaluator, self.weights, self.mutation, problem.generator, problem.timer,
                      selection=self.selection)
        for rec in ecomp.run(pop, self.epochs):
            problem.on_generation(rec)
        best, mean_fit = ecomp.pick_best(on_batch=lambda k: problem.on_step())
        final = ecomp.population
        evolved = detached(final.network(best))
        metrics = {"best_mean_fitness": float(mean_fit[best])}
        if not self.finetune_epochs:
            return Outcome(evolved, metrics)
        lr = self.parent_lr if self.lr is None else self.lr
        tuned = fine_tune(to_device(evolved, dev), x.to(dev), y.to(dev), self.finetune_epochs, lr, bs, problem.generator)
        return Outcome(tuned, metrics, stages={"evolved": evolved})
