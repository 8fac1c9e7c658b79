"""``similarity=cka``: 1 - linear CKA (Kornblith et al. 2019) between the parent's and the child's
activations on the batch, per hidden layer, summed. Comparable across widths, O(n^2 h) per layer.

With ``K = Xc Xc^T`` and ``M = Yc Yc^T`` the Gram matrices of the batch-centred activations,
``CKA = <K, M>_F / (||K||_F ||M||_F)``. Each child's raw Gram ``Y Y^T`` is one product (one
batched product for a population of one architecture), centred afterwards on the ``n x n``
matrix; the parent's centred Gram is kept per batch. A layer
whose activations are constant over the batch (all its units dead, or an earlier layer dead so
that it outputs ``relu(bias)``) has no defined CKA; it scores 1, as far from the parent as a
representation can be. The ``n x n`` work is in float64 (a float32 centring of a constant
layer's Gram leaves rounding noise that would pass for a signal).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import SimilarityMeasure


def centred_gram(a: Tensor) -> Tensor:
    """``(..., n, n)`` float64 Gram matrix of the batch-centred rows of ``a`` ``(..., n, h)``."""
    c = a.double() - a.double().mean(-2, keepdim=True)
    return c @ c.transpose(-1, -2)


# A centred Gram this small next to its raw Gram is rounding noise: the layer is constant over
# the batch (e.g. every unit dead, or an earlier layer dead so it outputs relu(bias)).
CONSTANT_REL = 1e-5


def centre_gram(g: Tensor) -> Tensor:
    """``H g H`` (``H = I - 11^T / n``) of raw Grams ``g`` ``(..., n, n)``: the centred activations' Gram."""
    return g - g.mean(-1, keepdim=True) - g.mean(-2, keepdim=True) + g.mean((-1, -2), keepdim=True)


def cka_from_raw_grams(k: Tensor, g: Tensor) -> Tensor:
    """Linear CKA from the parent's float64 centred Gram ``k`` and raw child Grams ``g`` ``(..., n, n)``,
    in float64. ``<k, H g H> = <k, g>`` because ``k`` is centred, so only the norm needs the centred
    ``g``. 0 where a side is constant over the batch (CKA undefined)."""
    g = g.double()
    dot = (g * k).sum((-1, -2))
    m_norm = centre_gram(g).norm(dim=(-1, -2))
    constant = m_norm <= CONSTANT_REL * g.norm(dim=(-1, -2))
    norms = k.norm() * m_norm
    ok = ~constant & (norms > 0)
    return torch.where(ok, dot / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(dot))


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
            for g in range(groups):
                rows = slice(g * n, (g + 1) * n)
                if stacked is not None:                                  # one batched product
                    units = stacked[l][:, :, rows]                           # (pop, h, n)
                    grams = torch.bmm(units.transpose(1, 2), units)
                else:                                                    # one product per network
                    grams = torch.stack([a[rows] @ a[rows].T for a in hidden[l]])
                out[g] += (1.0 - cka_from_raw_grams(states[g][l], grams)).float()
        return out

    def reference(self, state: list[Tensor], child: list[Tensor]) -> float:
        """Feature-space formula in float64: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``."""
        total = 0.0
        for x, y in zip(state, child):
            xc, yc = x - x.mean(0), y.double() - y.double().mean(0)
            den = float(torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))
            total += 1.0 - (float(torch.linalg.norm(yc.T @ xc) ** 2) / den if den > 0 else 0.0)
        return total
