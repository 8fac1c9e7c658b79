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

from . import native
from .network import Layers, model_from_layers
from .population import Population, forward
from .similarity import (calibrate, joint_probabilities_reference, kl_divergence, kl_from_conditionals,
                         shifted_distances, shifted_distances_stacked, squared_distances, symmetrise, with_diagonal)
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
    """Fast population evaluation on batch ``k`` of a fixed list of batches.

    ``kernels`` (``similarity.kernels``): ``native`` computes the Gram products, the
    perplexity search and the KL in the fused C kernels of :mod:`ecomp.native`, ``torch``
    in the batched PyTorch code of :mod:`ecomp.similarity`, ``auto`` picks native where it
    builds and the tensors are on the CPU. ``self.kernels`` is the one in use.
    """

    def __init__(self, parent: Layers, batches: list[tuple[Tensor, Tensor]], perplexity: float,
                 layers: list[int] | None = None, tol: float = 1e-5, timer: PhaseTimer | None = None,
                 kernels: str = "auto"):
        self.kernels = native.resolve(kernels, parent[0][0].device)
        self.parent = parent
        self.batches = batches
        self.perplexity = perplexity
        self.layers = list(range(len(parent) - 1)) if layers is None else list(layers)
        self.tol = tol
        self.timer = timer or NullTimer()
        self.parent_units = float(sum(w.shape[0] for w, _ in parent[:-1]))
        self._parent: dict[int, tuple[Tensor, Tensor]] = {}

    def _parent_batch(self, k: int, group: int = 10) -> tuple[Tensor, Tensor | None]:
        """Parent joint P ``(L, N, N)`` and ``beta * mean distance`` ``(L * N,)`` on batch ``k``;
        computed for ``group`` batches at a time (one forward, one perplexity search)."""
        if k not in self._parent:
            ks = [j for j in range(k, min(k + group, len(self.batches))) if j not in self._parent]
            n = self.batches[k][0].shape[0]
            with self.timer.phase("forward"):
                acts = _hidden_acts(self.parent, torch.cat([self.batches[j][0] for j in ks]))
            with self.timer.phase("similarity"):
                joint, beta_mean = self._joint([acts[l][g * n:(g + 1) * n] for g in range(len(ks))
                                                for l in self.layers])
            n_layers = len(self.layers)
            for g, j in enumerate(ks):
                bm = None if beta_mean is None else beta_mean.view(len(ks), -1)[g]
                self._parent[j] = (joint[g * n_layers:(g + 1) * n_layers], bm)
        return self._parent[k]

    def parent_p(self, k: int) -> Tensor:
        """``(layers, N, N)`` joint probabilities of the parent's hidden layers on batch ``k``."""
        return self._parent_batch(k)[0]

    def _conditionals(self, acts: list[Tensor], beta_mean: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(len(acts), N, N - 1)`` Gaussian conditionals of each activation matrix, and
        ``beta * mean distance`` of each row (the start for similar point sets)."""
        n = acts[0].shape[0]
        d = shifted_distances(acts)
        cond, beta = calibrate(d, self.perplexity, self.tol, beta_mean=beta_mean)
        return cond.view(len(acts), n, n - 1), beta * d.mean(1).double()

    def _joint(self, acts: list[Tensor]) -> tuple[Tensor, Tensor]:
        if self.kernels == "native":
            gram = native.grams_acts(acts, acts[0].shape[0])
            cond, beta_mean = native.conditionals(gram, self.perplexity, self.tol)
            return native.joint(cond), beta_mean.view(-1)
        cond, beta_mean = self._conditionals(acts)
        return symmetrise(with_diagonal(cond)), beta_mean

    def compression(self, pop: Population) -> Tensor:
        return (pop.hidden_units() / self.parent_units).to(torch.float32)

    def evaluate(self, pop: Population, k: int) -> Parts:
        return self.evaluate_many(pop, [k])[0]

    @torch.no_grad()
    def evaluate_many(self, pop: Population, ks: list[int]) -> list[Parts]:
        """:class:`Parts` on each of the batches ``ks``, from one forward pass over their
        concatenation: with 1,000 images instead of 100 the products are large enough to
        run near the machine's GEMM speed. Accuracy and similarity stay per batch, so the
        numbers are those of :meth:`evaluate` on each batch (up to float rounding).
        """
        x = self.batches[ks[0]][0] if len(ks) == 1 else torch.cat([self.batches[k][0] for k in ks])
        with self.timer.phase("forward"):
            logits, hidden, stacked = forward(pop, x)          # (pop, sum of batch sizes, C)
        n, n_layers, size = self.batches[ks[0]][0].shape[0], len(self.layers), pop.size
        parents = [self._parent_batch(k) for k in ks]          # (L, N, N), (L * N,): cached per batch
        with self.timer.phase("similarity"):
            if self.kernels == "native":                       # Grams, search and KL fused, per set
                sims = self._native_similarity(hidden, parents, size, n)          # (G, pop)
            elif stacked is not None:                          # one architecture: Grams batched over networks
                order = pop.slot_index()                       # stacked is in slot order
                layers = [stacked[l] if order is None else stacked[l].index_select(0, order) for l in self.layers]
                d = shifted_distances_stacked(layers, n).view(len(ks), -1, n - 1)
            else:                                              # one batched Gram per network over the batches
                d = shifted_distances([a.unflatten(0, (len(ks), n)) for l in self.layers for a in hidden[l]])
                d = d.view(len(ks), -1, n - 1)                 # (G, L * pop * N, N - 1)
        with self.timer.phase("forward"):
            accs = [(logits[:, g_ * n:(g_ + 1) * n].argmax(2) == self.batches[k][1]).float().mean(1)
                    for g_, k in enumerate(ks)]                # (pop,) per batch
        compression, out = self.compression(pop), []
        for g_, (p, parent_bm) in enumerate(parents):
            if self.kernels == "native":
                sim = sims[g_]
            else:
                with self.timer.phase("similarity"):
                    guess = parent_bm.view(n_layers, 1, -1).expand(-1, size, -1).reshape(-1)
                    cond, _ = calibrate(d[g_], self.perplexity, self.tol, beta_mean=guess)
                    sim = kl_from_conditionals(p, cond.view(-1, n, n - 1)).sum(0)     # (pop,)
            out.append(Parts(accs[g_].cpu(), sim.cpu(), compression))
        return out

    def _native_similarity(self, hidden: list[list[Tensor]], parents: list[tuple[Tensor, Tensor]],
                           size: int, n: int) -> Tensor:
        """``(G, pop)`` similarities straight from the activations: set ``(l, c, g)`` is
        network ``c``'s layer ``l`` on batch ``g``, compared with parent set ``g * L + l``."""
        n_layers, n_stack = len(self.layers), len(parents)
        p = torch.stack([pp for pp, _ in parents]).view(-1, n, n)                 # (G * L, N, N)
        guess = torch.stack([bm for _, bm in parents]).view(-1, n)                # (G * L, N)
        parent = (torch.arange(n_stack).view(1, 1, -1) * n_layers
                  + torch.arange(n_layers).view(-1, 1, 1)).expand(-1, size, -1).reshape(-1)
        acts = [a for l in self.layers for a in hidden[l]]                        # set (l, c, g): l-major
        kl = native.similarity_acts(acts, n, p, parent, self.perplexity, self.tol, guess=guess)
        return kl.view(n_layers, size, n_stack).sum(0).T.float()


class ReferenceEvaluator(Evaluator):
    """One module per individual, float64 scikit-learn-exact probabilities (slow; the oracle)."""

    def __init__(self, *args, **kwargs):
        kwargs["kernels"] = "torch"                            # its own float64 code; the kernels are unused
        super().__init__(*args, **kwargs)

    def _joint(self, acts: list[Tensor]) -> tuple[Tensor, None]:
        mats = [joint_probabilities_reference(squared_distances([a.double()])[0].cpu().numpy(),
                                              self.perplexity) for a in acts]
        return torch.from_numpy(np.stack(mats)), None

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
            q = self._joint([acts[l] for l in self.layers])[0]
            sim.append(float(kl_divergence(p, q).sum()))
        return Parts(torch.tensor(acc), torch.tensor(sim, dtype=torch.float32), self.compression(pop))

    def evaluate_many(self, pop: Population, ks: list[int]) -> list[Parts]:
        return [self.evaluate(pop, k) for k in ks]
