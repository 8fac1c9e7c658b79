"""What ``method=random_search``, ``evolve_widths`` and ``bee_colony`` share: the settings of a width search,
the data its scores read, the fine-tuning of the best candidates and the record of every candidate.

The data (never the test split): the score reads ``score_size`` held-out images, the first ones
of the run's validation split (training images outside the run's subset), and ``bn_batches``
batches of the run's training subset (its first images, for adaptive BatchNorm). The
``top_k`` best-scored candidates are then fine-tuned exactly as ``method=l1_finetune`` fine-tunes
(``epochs`` of Adam at ``lr`` on the run's subset, BatchNorm folded, from the L1-pruned candidate
itself, not its recalibrated copy: the score only chooses widths), and the one with the best
accuracy on the rest of the validation split, disjoint from the scored images, is returned.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


from ecomp.errors import finite, invalid
from ecomp.methods.base import Method, Outcome, Problem
from ecomp.nets.data import RunData, Split
from ecomp.nets.structure import accuracy, detached
from ecomp.nets.training import fine_tune
from ecomp.widths.scores import ScoreData, available, score_class
from ecomp.widths.space import WidthSpace


@dataclass
class Candidate:
    widths: tuple[int, ...]
    macs: float                         # relative to the parent's
    score: float
    generation: int = 0
    tuned: float = float("nan")        # validation accuracy after fine-tuning (top_k only)


def score_data(data: RunData, score_size: int, bn_batches: int, batch_size: int, device) -> tuple[ScoreData, Split]:
    """``(what the score reads, the images that pick the fine-tuned winner)``: see the module's docstring."""
    v, t = data.val, data.train
    if v.x.shape[0] <= score_size:
        raise ValueError(f"the validation split has {v.x.shape[0]} images; a width search needs more than "
                         f"score_size={score_size}")
    held = Split(v.x[:score_size].to(device), v.y[:score_size].to(device))
    pick = Split(v.x[score_size:].to(device), v.y[score_size:].to(device))
    calibration = [t.x[s:s + batch_size].to(device) for s in range(0, bn_batches * batch_size, batch_size)]
    return ScoreData(held, calibration, batch_size), pick


@dataclass
class WidthSearch(Method):
    macs: float = 0.5                  # MACs budget relative to the parent's
    tolerance: float = 0.02            # |MACs ratio - macs| allowed
    score: str = "adaptive_bn"
    bn_batches: int = 5
    score_size: int = 1000
    keep_low: float = 0.2              # fractions are drawn from U(keep_low, 1) before repair
    top_k: int = 2
    epochs: int = 1
    lr: float = 1e-3

    search_settings = ("macs", "tolerance", "score", "bn_batches", "score_size", "keep_low", "top_k", "epochs", "lr")

    @classmethod
    def build(cls, settings: dict[str, Any], context: Mapping[str, Any], scenario: str | None) -> "WidthSearch":
        method = cls(**settings)
        data = context.get("data") or {}
        val, train, bs = data.get("val_size"), data.get("train_size"), data.get("batch_size")
        if isinstance(val, int) and isinstance(method.score_size, int) and val <= method.score_size:
            raise invalid("method.score_size", method.score_size,
                          f"fewer than data.val_size={val} (the rest of the validation split picks the winner)")
        if all(isinstance(v, int) for v in (train, bs, method.bn_batches)) and method.bn_batches * bs > train:
            raise invalid("method.bn_batches", method.bn_batches,
                          f"at most data.train_size / data.batch_size = {train // bs}")
        return method

    def check(self) -> None:
        if not finite(self.macs) or not 0 < self.macs <= 1:
            raise invalid("method.macs", self.macs, "a fraction of the parent's MACs in (0, 1]")
        if not finite(self.tolerance) or not 0 < self.tolerance < 1:
            raise invalid("method.tolerance", self.tolerance, "a number in (0, 1)")
        if self.score not in available():
            raise invalid("method.score", self.score, f"one of {', '.join(available())}")
        for key in ("bn_batches", "score_size", "top_k"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise invalid(f"method.{key}", getattr(self, key), "an integer >= 1")
        if not finite(self.keep_low) or not 0 < self.keep_low <= 1:
            raise invalid("method.keep_low", self.keep_low, "a fraction in (0, 1]")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise invalid("method.epochs", self.epochs, "an integer >= 0")
        if not finite(self.lr) or self.lr <= 0:
            raise invalid("method.lr", self.lr, "a number > 0")

    def labels(self) -> dict[str, str]:
        out = super().labels()
        out.setdefault("score", self.score)
        out.setdefault("macs", f"{self.macs:g}")
        return out

    def search(self, space: WidthSpace, score: Callable[[tuple[int, ...]], float],
               problem: Problem) -> list[Candidate]:
        """Every candidate the search scored, in the order it scored them; ``score(widths)`` scores
        one (each distinct widths once: later calls read a cache)."""
        raise NotImplementedError

    def run(self, problem: Problem) -> Outcome:
        dev = problem.device
        space = WidthSpace(problem.parent, self.macs, self.tolerance)
        data, pick = score_data(problem.data, self.score_size, self.bn_batches, problem.batch_size, dev)
        t0 = time.perf_counter()
        scorer = score_class(self.score)(problem.parent, data, problem.backend)
        cache: dict[tuple[int, ...], float] = {}

        def score(widths: tuple[int, ...]) -> float:
            if widths not in cache:
                cache[widths] = scorer(space.network(widths), [k.to(dev) for k in space.kept_units(widths)])
                problem.on_step()
            return cache[widths]

        records = self.search(space, score, problem)
        t1 = time.perf_counter()
        best_first = sorted({c.widths: c for c in records}.values(), key=lambda c: -c.score)[:self.top_k]
        t, tuned = problem.data.train, []
        for c in best_first:
            net = fine_tune(space.network(c.widths), t.x.to(dev), t.y.to(dev), self.epochs, self.lr,
                            problem.batch_size, problem.generator)
            c.tuned = accuracy(net, pick.x, pick.y)
            for r in records:
                if r.widths == c.widths:
                    r.tuned = c.tuned
            tuned.append((c.tuned, net, c))
            problem.on_step()
        t2 = time.perf_counter()
        _, net, winner = max(tuned, key=lambda r: r[0])      # the first on a tie: the best-scored
        metrics = {"search_seconds": t1 - t0, "finetune_seconds": t2 - t1, "candidates_scored": float(len(cache)),
                   "winner_score": winner.score, "winner_macs_ratio": winner.macs, "winner_pick_accuracy": winner.tuned}
        for g, (w, u) in enumerate(zip(winner.widths, space.units)):
            metrics[f"width_{g}"], metrics[f"keep_{g}"] = float(w), w / u
        return Outcome(detached(net), metrics, stages={"searched": detached(space.network(winner.widths))},
                       artifacts={"candidates.csv": table(records, space.units)})


def table(records: list[Candidate], units: tuple[int, ...]) -> str:
    """Every scored candidate as CSV: generation, widths and keep fractions per group, MACs, score,
    validation accuracy after fine-tuning (empty unless it was among the ``top_k``)."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["candidate", "generation", *(f"width_{g}" for g in range(len(units))),
                *(f"keep_{g}" for g in range(len(units))), "macs_ratio", "score", "finetuned_pick_accuracy"])
    for i, c in enumerate(records):
        w.writerow([i, c.generation, *c.widths, *(f"{a / u:.4f}" for a, u in zip(c.widths, units)),
                    f"{c.macs:.5f}", f"{c.score:.6g}", "" if c.tuned != c.tuned else f"{c.tuned:.5f}"])
    return out.getvalue()
