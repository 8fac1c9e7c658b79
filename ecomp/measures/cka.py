"""``similarity=cka``: 1 - linear CKA (Kornblith et al. 2019) between the parent's and the child's
activations on the batch, per hidden layer, summed. Comparable across widths, O(n^2 h) per layer.

With ``K = Xc Xc^T`` and ``M = Yc Yc^T`` the Gram matrices of the batch-centred activations,
``CKA = <K, M>_F / (||K||_F ||M||_F)``. The population is scored with one Gram per network
(one batched product when it has one architecture) against the parent's kept Gram. A layer
whose activations are constant over the batch (all its units dead) has no defined CKA;
it scores 1, as far from the parent as a representation can be.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import SimilarityMeasure


def centred_gram(a: Tensor) -> Tensor:
    """``(..., n, n)`` Gram matrix of the batch-centred rows of ``a`` ``(..., n, h)``."""
    c = a - a.mean(-2, keepdim=True)
    return c @ c.transpose(-1, -2)


def cka_from_grams(k: Tensor, m: Tensor) -> Tensor:
    """Linear CKA from centred Grams ``k`` ``(n, n)`` and ``m`` ``(..., n, n)``; 0 where undefined."""
    dot = (m * k).sum((-1, -2))
    norms = k.norm() * m.norm(dim=(-1, -2))
    return torch.where(norms > 0, dot / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(dot))


class LinearCKA(SimilarityMeasure):
    name = "cka"
    settings = ()

    @classmethod
    def from_config(cls, cfg: Any, device: Any) -> "LinearCKA":
        return cls()

    def prepare(self, parent: list[Tensor], n: int) -> list[list[Tensor]]:
        groups = parent[0].shape[0] // n
        return [[centred_gram(a[g * n:(g + 1) * n]) for a in parent] for g in range(groups)]

    def score(self, hidden: list[list[Tensor]], stacked: list[Tensor] | None, states: list, n: int) -> Tensor:
        groups = len(states)
        out = torch.zeros(groups, len(hidden[0]), device=hidden[0][0].device)
        for l in range(len(hidden)):
            if stacked is not None:
                acts = stacked[l].transpose(1, 2).unflatten(1, (groups, n))               # (pop, G, n, h)
            else:
                acts = [a.unflatten(0, (groups, n)) for a in hidden[l]]                   # pop x (G, n, h)
            for g in range(groups):
                if stacked is not None:
                    grams = centred_gram(acts[:, g])                                       # (pop, n, n)
                else:
                    grams = torch.stack([centred_gram(a[g]) for a in acts])
                out[g] += 1.0 - cka_from_grams(states[g][l], grams)
        return out

    def reference(self, state: list[Tensor], child: list[Tensor]) -> float:
        """Feature-space formula in float64: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``."""
        total = 0.0
        for x, y in zip(state, child):
            xc, yc = x - x.mean(0), y.double() - y.double().mean(0)
            den = float(torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))
            total += 1.0 - (float(torch.linalg.norm(yc.T @ xc) ** 2) / den if den > 0 else 0.0)
        return total
