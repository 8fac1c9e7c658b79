"""``similarity=tsne``: the paper's measure. KL(P_parent || P_child) of t-SNE joint probabilities
(perplexity-calibrated Gaussians) per hidden layer, summed; native fused kernels or PyTorch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ecomp.kernels import blocked, native
from ecomp.kernels.backend import Backend, resolve
from ecomp.kernels.tsne_torch import (calibrate, joint_probabilities_reference, kl_divergence, kl_from_conditionals,
                          shifted_distances, shifted_distances_stacked, squared_distances, symmetrise, with_diagonal)
from ecomp.measures.base import SimilarityMeasure


class TSNE(SimilarityMeasure):
    name = "tsne"
    settings = ("perplexity", "tol", "kernels")

    def __init__(self, perplexity: float = 30.0, tol: float = 1e-5, backend: Backend | None = None):
        self.perplexity, self.tol = perplexity, tol
        self.backend = backend or resolve()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], backend: Backend) -> "TSNE":
        return cls(settings["perplexity"], settings["tol"], backend)

    # -- the parent's side: joint P (L, N, N) and beta x mean distance per row, per batch --------
    def prepare(self, parent: list[Tensor], n: int) -> list[tuple[Tensor, Tensor | None]]:
        groups, n_layers = parent[0].shape[0] // n, len(parent)
        joint, beta_mean = self._joint([parent[l][g * n:(g + 1) * n] for g in range(groups) for l in range(n_layers)])
        return [(joint[g * n_layers:(g + 1) * n_layers],
                 None if beta_mean is None else beta_mean.view(groups, -1)[g]) for g in range(groups)]

    def _joint(self, acts: list[Tensor]) -> tuple[Tensor, Tensor]:
        if self.backend.native_similarity:
            gram = blocked.grams(acts, acts[0].shape[0])
            cond, beta_mean = native.conditionals(gram, self.perplexity, self.tol)
            return native.joint(cond), beta_mean.view(-1)
        n = acts[0].shape[0]
        d = shifted_distances(acts)
        cond, beta = calibrate(d, self.perplexity, self.tol, check_every=self.backend.host_check_every)
        return symmetrise(with_diagonal(cond.view(len(acts), n, n - 1))), beta * d.mean(1).double()

    # -- a population against it --------------------------------------------------------------
    def score(self, hidden: list[list[Tensor]], stacked: list[Tensor] | None, states: list, n: int) -> Tensor:
        n_layers, size, groups = len(hidden), len(hidden[0]), len(states)
        if self.backend.native_similarity:                 # Grams, search and KL fused, per set
            return self._native(hidden, states, size, n)
        if stacked is not None:                            # one architecture: Grams batched over networks
            d = shifted_distances_stacked(stacked, n).view(groups, -1, n - 1)
        else:                                              # one batched Gram per network over the batches
            d = shifted_distances([a.unflatten(0, (groups, n)) for layer in hidden for a in layer])
            d = d.view(groups, -1, n - 1)                  # (G, L * pop * N, N - 1)
        out = []
        for g, (p, parent_bm) in enumerate(states):
            guess = parent_bm.view(n_layers, 1, -1).expand(-1, size, -1).reshape(-1)
            cond, _ = calibrate(d[g], self.perplexity, self.tol, beta_mean=guess,
                                check_every=self.backend.host_check_every)
            out.append(kl_from_conditionals(p, cond.view(-1, n, n - 1)).sum(0))     # (pop,)
        return torch.stack(out)

    def _native(self, hidden: list[list[Tensor]], states: list, size: int, n: int) -> Tensor:
        """Set ``(l, c, g)`` is network ``c``'s layer ``l`` on batch ``g``, against parent set ``g * L + l``."""
        n_layers, n_stack = len(hidden), len(states)
        p = torch.stack([pp for pp, _ in states]).view(-1, n, n)                  # (G * L, N, N)
        guess = torch.stack([bm for _, bm in states]).view(-1, n)                 # (G * L, N)
        parent = (torch.arange(n_stack).view(1, 1, -1) * n_layers
                  + torch.arange(n_layers).view(-1, 1, 1)).expand(-1, size, -1).reshape(-1)
        acts = [a for layer in hidden for a in layer]                             # l-major
        parent = parent.view(len(acts), n_stack)
        kl = torch.empty(len(acts), n_stack, dtype=torch.float64)
        wide = [s for s, a in enumerate(acts) if native.is_wide(a)]                # feature maps: the GEMM's Grams
        narrow = [s for s, a in enumerate(acts) if not native.is_wide(a)]         # Gram, search, KL in cache
        if narrow:
            kl[narrow] = native.similarity_acts([acts[s] for s in narrow], n, p, parent[narrow].reshape(-1),
                                                self.perplexity, self.tol, guess=guess).view(len(narrow), n_stack)
        if wide:
            kl[wide] = native.similarity_grams(blocked.wide_grams([acts[s] for s in wide], n), p,
                                               parent[wide].reshape(-1), self.perplexity, self.tol,
                                               guess=guess).view(len(wide), n_stack)
        return kl.view(n_layers, size, n_stack).sum(0).T.float()

    # -- the oracle ---------------------------------------------------------------------------
    def reference_prepare(self, parent: list[Tensor]) -> Tensor:
        return self.reference_joint(parent)

    def reference(self, state: Tensor, child: list[Tensor]) -> float:
        return float(kl_divergence(state, self.reference_joint(child)).sum())

    def reference_joint(self, acts: list[Tensor]) -> Tensor:
        """scikit-learn's exact float64 joint probabilities of each activation matrix."""
        mats = [joint_probabilities_reference(squared_distances([a.double()])[0].cpu().numpy(), self.perplexity)
                for a in acts]
        return torch.from_numpy(np.stack(mats))
