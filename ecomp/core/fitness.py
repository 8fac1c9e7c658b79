"""Accuracy, compression and similarity of every individual on a batch, and their weighted sum.

Two evaluators compute the same :class:`Parts`:

* :class:`Evaluator`: the whole population at once (packed first layer, the
  similarity measure batched over networks); the production path.
* :class:`ReferenceEvaluator`: one ``nn.Sequential`` per individual and the
  measure's float64 formula (for t-SNE, scikit-learn's probabilities step for
  step); the test oracle.

The parent's side of the similarity depends only on the batch, so the fast
evaluator prepares it once per batch and keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ecomp.kernels import net_forward
from ecomp.kernels.forward import Workspace, forward
from ecomp.measures.base import SimilarityMeasure
from ecomp.nets.structure import Individuals, Structure
from ecomp.timing import NullTimer, PhaseTimer


@dataclass(frozen=True)
class Weights:
    w_acc: float
    w_sim: float
    w_comp: float

    @property
    def scenario(self) -> str:
        """The paper's name for these weights: ``121`` for ``(1, 2, 1)``."""
        return "".join(f"{w:g}" for w in (self.w_acc, self.w_sim, self.w_comp))


@dataclass
class Parts:
    accuracy: Tensor     # (pop,) fraction of the batch classified correctly
    similarity: Tensor   # (pop,) sum over layers of KL(P_parent || P_child)
    compression: Tensor  # (pop,) the child's size / the parent's: hidden units (the paper) or parameters

    def fitness(self, w: Weights) -> Tensor:
        return w.w_acc * self.accuracy - w.w_sim * self.similarity + w.w_comp * (1.0 - self.compression)


PARTS = frozenset({"accuracy", "similarity"})     # the parts that cost a forward pass (compression does not)


def needed_parts(w: Weights) -> frozenset[str]:
    """The parts the fitness reads: those with a non-zero weight. A part left out is computed as
    zeros, and ``0 * x`` is exactly ``0 * 0`` for every finite ``x``, so the fitness is bit for bit
    the same (the final pick of scenarios 001, 100 and 101 skips the similarity; 001 the forward pass)."""
    return frozenset(p for p, weight in (("accuracy", w.w_acc), ("similarity", w.w_sim)) if weight != 0)


def _hidden_acts(net: Structure, x: Tensor, features: str = "flat") -> list[Tensor]:
    """Post-ReLU activations of every prunable layer (a conv stage's as ``features`` per image)."""
    return net.run(x, features)[1]


def in_precision(precision: str, device: torch.device):
    """The context the population's and the parent's forward passes run in: nothing for
    ``float32``; for ``bfloat16``, ``torch.autocast`` (convolutions and products in bfloat16 with
    float32 accumulation, oneDNN's AMX kernels on a CPU that has them)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def _as_float(acts: list, precision: str) -> list:
    """Representations in float32 for the similarity's kernels (a copy only under bfloat16)."""
    if precision == "float32":
        return acts
    return [[a.float() for a in layer] if isinstance(layer, list) else layer.float() for layer in acts]


class Evaluator:
    """Fast population evaluation on batch ``k`` of a fixed list of batches.

    The similarity is ``measure``'s (:mod:`ecomp.measures`: the paper's is
    :class:`ecomp.measures.tsne.TSNE`), and the forward pass runs as the measure's backend
    chooses. ``compression``: what a child's size counts, relative to the parent's
    (:func:`ecomp.nets.sizes.size`): ``units`` (hidden units, the paper's) or ``params``.
    ``padded``: forces the padded forward pass on or off (``None``: as the backend says).
    The population is the parent's kind's (:func:`ecomp.nets.kinds.population_of`): a packed one
    runs the population-wide products (:mod:`ecomp.kernels.forward`), one network per individual
    the grouped pass (:mod:`ecomp.kernels.conv_forward`). ``features``: what the similarity reads
    of a conv stage's maps, ``flat`` (every value) or ``pooled`` (each channel's mean).
    ``precision``: ``float32`` (the paper), or ``bfloat16`` for a population of one network per
    individual (a CNN's, a ResNet's): its forward passes and the parent's run under
    :func:`in_precision`, so a child and the parent are read alike; accuracy and similarity are
    then taken as they are in float32.
    """

    def __init__(self, parent: Structure, batches: list[tuple[Tensor, Tensor]], measure: SimilarityMeasure,
                 layers: list[int] | None = None, timer: PhaseTimer | None = None, compression: str = "units",
                 padded: bool | None = None, features: str = "flat", precision: str = "float32"):
        self.measure = measure
        self.precision = precision
        self.backend = measure.backend
        self.parent = parent
        self.batches = batches
        self.layers = list(range(parent.feature_layers)) if layers is None else list(layers)
        self.timer = timer or NullTimer()
        self.size_kind = compression
        self.parent_size = float(parent.size(compression))
        self.features = features
        self._parent: dict[int, object] = {}
        self.workspace = Workspace()          # the population's first-layer activations, reused
        self.padded = padded                  # several widths as zero-padded stacks (forward's ``padded``)

    def prepare(self, k: int) -> None:
        """Prepare (and keep) the parent's side of batch ``k`` ahead of :meth:`evaluate`."""
        self._parent_state(k)

    def _parent_state(self, k: int, group: int = 10):
        """The measure's parent side of batch ``k``; prepared for ``group`` batches at a time
        (one forward pass, one call of the measure) and kept."""
        if k not in self._parent:
            ks = [j for j in range(k, min(k + group, len(self.batches))) if j not in self._parent]
            n = self.batches[k][0].shape[0]
            with self.timer.phase("forward"):
                x = torch.cat([self.batches[j][0] for j in ks])
                with in_precision(self.precision, x.device):
                    acts = _as_float(_hidden_acts(self.parent, x, self.features), self.precision)
            with self.timer.phase("similarity"):
                states = self.measure.prepare([acts[l] for l in self.layers], n)
            self._parent.update(zip(ks, states))
        return self._parent[k]

    def compression(self, pop: Individuals) -> Tensor:
        return (pop.sizes(self.size_kind) / self.parent_size).to(torch.float32)

    def evaluate(self, pop: Individuals, k: int) -> Parts:
        return self.evaluate_many(pop, [k])[0]

    @torch.no_grad()
    def evaluate_many(self, pop: Individuals, ks: list[int], parts: frozenset[str] = PARTS) -> list[Parts]:
        """:class:`Parts` on each of the batches ``ks``, from one forward pass over their
        concatenation: with 1,000 images instead of 100 the products are large enough to
        run near the machine's GEMM speed. Accuracy and similarity stay per batch, so the
        numbers are those of :meth:`evaluate` on each batch (up to float rounding).

        ``parts``: which of accuracy and similarity to compute; the others are zeros (see
        :func:`needed_parts`). Without either there is no forward pass.
        """
        compression = self.compression(pop)
        zeros = torch.zeros(pop.size)
        if not parts & PARTS:
            return [Parts(zeros, zeros, compression) for _ in ks]
        if not pop.packed and len(ks) > 1:     # one network each: a CNN's maps of 1,000 images would be GBs
            return [p for k in ks for p in self.evaluate_many(pop, [k], parts)]
        x = self.batches[ks[0]][0] if len(ks) == 1 else torch.cat([self.batches[k][0] for k in ks])
        with self.timer.phase("forward"):
            # logits: (pop, sum of batch sizes, C)
            if pop.packed:
                logits, hidden, stacked = forward(pop, x, workspace=self.workspace, padded=self.padded,
                                                  backend=self.backend)
            else:
                with in_precision(self.precision, x.device):
                    logits, hidden, stacked = net_forward.forward(pop, x, self.features, backend=self.backend)
                hidden = _as_float(hidden, self.precision)
        n = self.batches[ks[0]][0].shape[0]
        sims = accs = [zeros] * len(ks)
        if "similarity" in parts:
            states = [self._parent_state(k) for k in ks]           # cached per batch
            with self.timer.phase("similarity"):
                if stacked is not None:                            # stacked is in slot order
                    order = pop.slot_index()
                    stacked = [stacked[l] if order is None else stacked[l].index_select(0, order)
                               for l in self.layers]
                sims = self.measure.score([hidden[l] for l in self.layers], stacked, states, n)    # (G, pop)
        if "accuracy" in parts:
            with self.timer.phase("forward"):
                accs = [(logits[:, g_ * n:(g_ + 1) * n].argmax(2) == self.batches[k][1]).float().mean(1)
                        for g_, k in enumerate(ks)]                # (pop,) per batch
        return [Parts(accs[g_].cpu(), sims[g_].cpu(), compression) for g_ in range(len(ks))]


class ReferenceEvaluator(Evaluator):
    """One module per individual, the measure's straightforward float64 formula (slow; the oracle)."""

    @torch.no_grad()
    def _parent_state(self, k: int, group: int = 1):
        if k not in self._parent:
            acts = _hidden_acts(self.parent, self.batches[k][0], self.features)
            self._parent[k] = self.measure.reference_prepare([acts[l] for l in self.layers])
        return self._parent[k]

    @torch.no_grad()
    def evaluate(self, pop: Individuals, k: int) -> Parts:
        x, y = self.batches[k]
        parent = self._parent_state(k)
        acc, sim = [], []
        for i in range(pop.size):
            net = pop.network(i)
            model = net.to_module()
            acc.append(float((model(x).argmax(1) == y).float().mean()))
            acts = _hidden_acts(net, x, self.features)
            sim.append(self.measure.reference(parent, [acts[l] for l in self.layers]))
        return Parts(torch.tensor(acc), torch.tensor(sim, dtype=torch.float32), self.compression(pop))

    def evaluate_many(self, pop: Individuals, ks: list[int], parts: frozenset[str] = PARTS) -> list[Parts]:
        """Every part on every batch, whatever ``parts`` asks (the oracle skips nothing)."""
        return [self.evaluate(pop, k) for k in ks]
