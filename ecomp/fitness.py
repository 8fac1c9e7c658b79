"""Accuracy, compression and similarity of every individual on a batch, and their weighted sum.

Two evaluators compute the same :class:`Parts`:

* :class:`Evaluator`: the whole population at once (packed first layer, batched
  t-SNE probabilities); the production path.
* :class:`ReferenceEvaluator`: one ``nn.Sequential`` per individual and the
  float64 step-for-step scikit-learn probabilities; the test oracle.

The parent's joint probabilities depend only on the batch, so both compute
them once per batch and keep them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .network import Layers, model_from_layers
from .population import Population, forward
from .similarity import (joint_probabilities, joint_probabilities_reference, kl_divergence,
                         squared_distances)
from .timing import NullTimer, PhaseTimer


@dataclass(frozen=True)
class Weights:
    w_acc: float
    w_sim: float
    w_comp: float


@dataclass
class Parts:
    accuracy: Tensor     # (pop,) fraction of the batch classified correctly
    similarity: Tensor   # (pop,) sum over layers of KL(P_parent || P_child)
    compression: Tensor  # (pop,) hidden units of the child / hidden units of the parent

    def fitness(self, w: Weights) -> Tensor:
        return w.w_acc * self.accuracy - w.w_sim * self.similarity + w.w_comp * (1.0 - self.compression)


def _hidden_acts(layers: Layers, x: Tensor) -> list[Tensor]:
    acts, h = [], x
    for w, b in layers[:-1]:
        h = torch.addmm(b, h, w.T).relu()
        acts.append(h)
    return acts


class Evaluator:
    """Fast population evaluation on batch ``k`` of a fixed list of batches."""

    def __init__(self, parent: Layers, batches: list[tuple[Tensor, Tensor]], perplexity: float,
                 layers: list[int] | None = None, tol: float = 1e-5, timer: PhaseTimer | None = None):
        self.parent = parent
        self.batches = batches
        self.perplexity = perplexity
        self.layers = list(range(len(parent) - 1)) if layers is None else list(layers)
        self.tol = tol
        self.timer = timer or NullTimer()
        self.parent_units = float(sum(w.shape[0] for w, _ in parent[:-1]))
        self._parent_p: dict[int, Tensor] = {}

    def parent_p(self, k: int) -> Tensor:
        """``(layers, N, N)`` joint probabilities of the parent's hidden layers on batch ``k``."""
        if k not in self._parent_p:
            acts = _hidden_acts(self.parent, self.batches[k][0])
            self._parent_p[k] = self._joint([acts[l] for l in self.layers])
        return self._parent_p[k]

    def _joint(self, acts: list[Tensor]) -> Tensor:
        return joint_probabilities(squared_distances(acts), self.perplexity, self.tol)

    def compression(self, pop: Population) -> Tensor:
        return (pop.hidden_units() / self.parent_units).to(torch.float32)

    @torch.no_grad()
    def evaluate(self, pop: Population, k: int) -> Parts:
        x, y = self.batches[k]
        p = self.parent_p(k)                                   # (L, N, N)
        with self.timer.phase("forward"):
            logits, hidden = forward(pop, x)                   # (pop, N, C)
            acc = (logits.argmax(2) == y).float().mean(1)      # (pop,)
        with self.timer.phase("similarity"):
            n = x.shape[0]
            acts = [a for l in self.layers for a in hidden[l]]             # layer-major
            q = self._joint(acts).view(len(self.layers), pop.size, n, n)   # (L, pop, N, N)
            # KL = sum p (log p - log q): one in-place pass and one dot product per matrix
            ratio = q.log_().neg_().add_(p.log().unsqueeze(1))               # log p - log q
            kl = torch.einsum("lpk,lk->lp", ratio.view(len(self.layers), pop.size, n * n),
                              p.view(len(self.layers), n * n))               # (L, pop)
            sim = kl.sum(0)                                                  # (pop,)
        return Parts(acc.cpu(), sim.cpu(), self.compression(pop))


class ReferenceEvaluator(Evaluator):
    """One module per individual, float64 scikit-learn-exact probabilities (slow; the oracle)."""

    def _joint(self, acts: list[Tensor]) -> Tensor:
        mats = [joint_probabilities_reference(squared_distances([a.double()])[0].cpu().numpy(),
                                              self.perplexity) for a in acts]
        return torch.from_numpy(np.stack(mats))

    @torch.no_grad()
    def evaluate(self, pop: Population, k: int) -> Parts:
        x, y = self.batches[k]
        p = self.parent_p(k)
        acc, sim = [], []
        for i in range(pop.size):
            layers = pop.individual(i)
            model = model_from_layers(layers)
            acc.append(float((model(x).argmax(1) == y).float().mean()))
            acts = _hidden_acts(layers, x)
            q = self._joint([acts[l] for l in self.layers])
            sim.append(float(kl_divergence(p, q).sum()))
        return Parts(torch.tensor(acc), torch.tensor(sim, dtype=torch.float32), self.compression(pop))
