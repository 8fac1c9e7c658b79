"""The EComp loop: select -> recombine -> mutate -> evaluate, one generation per batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ecomp.core.fitness import Evaluator, Parts, Weights, needed_parts
from ecomp.core.mutation import MutationSpec, mutate_
from ecomp.core.recombination import recombine
from ecomp.core.selection import Selection, elites
from ecomp.nets.structure import Individuals
from ecomp.timing import NullTimer, PhaseTimer

PICK_GROUP = 10   # batches per forward pass in the final pick (1,000 images: near-GEMM-speed products)
MEASURES = ("fitness", "accuracy", "similarity", "compression")
# "best" is the max for these, the min for the others (lower similarity and compression are better)
HIGHER_IS_BETTER = {"fitness": True, "accuracy": True, "similarity": False, "compression": False}


@dataclass
class GenerationRecord:
    generation: int
    batch: int
    metrics: dict[str, float]   # "<measure>_<mean|best|worst>" -> value


def summarise(generation: int, batch: int, parts: Parts, fitness: Tensor) -> GenerationRecord:
    values = {"fitness": fitness, "accuracy": parts.accuracy,
              "similarity": parts.similarity, "compression": parts.compression}
    metrics = {}
    for name, v in values.items():
        v = v.double()
        hi, lo = float(v.max()), float(v.min())
        best, worst = (hi, lo) if HIGHER_IS_BETTER[name] else (lo, hi)
        metrics.update({f"{name}_mean": float(v.mean()), f"{name}_best": best, f"{name}_worst": worst})
    return GenerationRecord(generation, batch, metrics)


class EComp:
    """Runs the evolution; ``population`` and ``fitness`` hold the latest generation."""

    def __init__(self, evaluator: Evaluator, weights: Weights, mutation: MutationSpec,
                 generator: torch.Generator, timer: PhaseTimer | None = None, in_place: bool = True,
                 selection: Selection | None = None):
        """``in_place``: once the population has one architecture, crossover writes the children
        over their parents' storage (``recombine(..., in_place=True)``; same numbers, fewer bytes
        moved). False keeps every generation in storage of its own (the tests' oracle).
        ``selection``: None = the paper's roulette. The operators run on the evaluator's backend."""
        self.in_place = in_place
        self.selection = selection or Selection()
        self.backend = evaluator.backend
        self.evaluator = evaluator
        self.weights = weights
        self.mutation = mutation
        self.generator = generator
        self.timer = timer or NullTimer()
        self.population: Individuals | None = None
        self.fitness: Tensor | None = None

    def _evaluate(self, pop: Individuals, k: int, generation: int) -> GenerationRecord:
        parts = self.evaluator.evaluate(pop, k)
        self.population, self.fitness = pop, parts.fitness(self.weights)
        return summarise(generation, k, parts, self.fitness)

    def run(self, population: Individuals, epochs: int) -> Iterator[GenerationRecord]:
        """Yield generation 0 (the initial population on batch 0), then one record per batch."""
        yield self._evaluate(population, 0, 0)
        generation = 0
        buffers, later = _recycled_storage(population)
        for _ in range(epochs):
            for k in range(len(self.evaluator.batches)):
                generation += 1
                with self.timer.phase("operators"):
                    children = self._breed(buffers[generation % 2], later[generation % 2])
                yield self._evaluate(children, k, generation)

    def _breed(self, buffer: Tensor | None, layers_out: list[tuple[Tensor, Tensor]] | None = None) -> Individuals:
        """The next generation: ``pop - elite`` children of selected pairs, mutated, then the
        ``elite`` fittest of the current generation, copied unchanged."""
        sel, pop = self.selection, self.population
        pairs = sel.pairs(self.fitness, self.generator)
        kept = pop.take(elites(self.fitness, sel.elite)) if sel.elite else None    # copies
        # In place, the children would take over the elites' storage: elitism copies instead.
        children = recombine(pop, pairs, self.generator, out=buffer, in_place=self.in_place and kept is None,
                             layers_out=layers_out, backend=self.backend)
        m = self.mutation
        mutate_(children, m.rate, m.low, m.high, self.generator, backend=self.backend)
        return children if kept is None else type(children).concat([children, kept])

    def pick_best(self, on_batch: Callable[[int], None] | None = None,
                  group: int = PICK_GROUP) -> tuple[int, Tensor]:
        """Index of the final individual with the best fitness averaged over all batches.

        The population no longer changes, so ``group`` batches share one forward pass. Nothing
        of the pick is logged but this mean, so the parts whose weight is zero are not computed
        (:func:`ecomp.core.fitness.needed_parts`; the same fitness bit for bit).
        Returns ``(index, mean fitness per individual)``.
        """
        total = torch.zeros(self.population.size, dtype=torch.float64)
        n = len(self.evaluator.batches)
        parts_needed = needed_parts(self.weights)
        for s in range(0, n, group):
            ks = list(range(s, min(s + group, n)))
            for k, parts in zip(ks, self.evaluator.evaluate_many(self.population, ks, parts_needed)):
                total += parts.fitness(self.weights).double()
                if on_batch:
                    on_batch(k)
        mean = total / len(self.evaluator.batches)
        return int(mean.argmax()), mean


def _recycled_storage(population: Individuals) -> tuple[list, list]:
    """Two alternating sets of buffers for a packed population's children, so children never
    overlap their parents: the first layers' rows (widths never grow, children take their
    parents' shapes, so size x widest rows suffice) and every later layer's flat weights and
    biases (size x the largest individual's). A fresh allocation over glibc's mmap threshold
    would be faulted in anew every generation. Once the population has one architecture,
    crossover works in place instead (see :func:`ecomp.core.recombination.recombine`). A
    population of one network per individual has nothing to recycle: ``None`` for each."""
    if not population.packed:
        return [None, None], [None, None]
    capacity = population.size * max(w[0] for w in population.widths)
    buffers = [population.first_w.new_empty(capacity, population.first_w.shape[1]) for _ in range(2)]
    size = population.size
    later = [[(population.layer_w[l].new_empty(size * max(wo[s + 1] - wo[s] for s in range(size))),
               population.layer_b[l].new_empty(size * max(bo[s + 1] - bo[s] for s in range(size))))
              for l, (wo, bo) in enumerate(zip(population.w_offsets, population.b_offsets))] for _ in range(2)]
    return buffers, later
