"""``similarity=cka``: 1 - linear CKA (Kornblith et al. 2019) between the parent's and the child's
activations on the batch, per hidden layer, summed. Comparable across widths, O(n^2 h) per layer.

With ``K = Xc Xc^T`` and ``M = Yc Yc^T`` the Gram matrices of the batch-centred activations,
``CKA = <K, M>_F / (||K||_F ||M||_F)``. Each child's activations are centred over the batch and
its Gram is one product (one batched product for a population of one architecture); the
parent's centred Gram is kept per batch. A layer
whose activations are constant over the batch (all its units dead, or an earlier layer dead so
that it outputs ``relu(bias)``) has no defined CKA; it scores 1, as far from the parent as a
representation can be (it is recognised by its centred energy, see ``CONSTANT_SHARE``, since
centring a constant in float32 leaves rounding noise that would otherwise pass for a signal).

With ``kernels=native`` every network's Gram of a layer comes from one threaded call of the C
Gram kernel the t-SNE path uses (:func:`ecomp.kernels.native.grams_acts` with ``centre=True``: it centres
each feature as it copies it into its block buffer), whatever the widths; ``torch`` makes one
batched product for a population of one architecture and one product per network otherwise
(the test oracle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ecomp.kernels import native
from ecomp.kernels.backend import Backend, resolve
from ecomp.measures.base import SimilarityMeasure


def centred_gram(a: Tensor) -> Tensor:
    """``(..., n, n)`` float64 Gram matrix of the batch-centred rows of ``a`` ``(..., n, h)`` (the parent's)."""
    c = a.double() - a.double().mean(-2, keepdim=True)
    return c @ c.transpose(-1, -2)


# A layer whose centred activations hold less than this share of their raw energy is constant over
# the batch (all units dead, or an earlier layer dead so that it outputs relu(bias)): what is left
# after centring is rounding noise, not a representation.
CONSTANT_SHARE = 1e-10


def cka_from_centred(k: Tensor, m: Tensor, mean_energy: Tensor) -> Tensor:
    """Linear CKA from the parent's centred Gram ``k`` ``(n, n)`` and centred child Grams ``m``
    ``(..., n, n)``; ``mean_energy``: ``n * |mean activation|^2`` of each child, so that
    ``trace(m) + mean_energy`` is its raw activation energy. 0 where a side is constant over the
    batch (CKA undefined there)."""
    n = k.shape[-1]
    flat = m.reshape(-1, n * n)                                   # a view for the contiguous Grams given here
    dot = (flat @ k.reshape(n * n).to(flat.dtype)).view(m.shape[:-2])   # <m, k>: one matrix-vector product
    norms = k.norm() * torch.linalg.vector_norm(flat, dim=1).view(m.shape[:-2])
    centred = flat[:, ::n + 1].sum(1).view(m.shape[:-2])            # trace(m) = sum(c^2)
    constant = centred <= CONSTANT_SHARE * (centred + mean_energy)
    ok = ~constant & (norms > 0)
    return torch.where(ok, dot / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(dot))


class LinearCKA(SimilarityMeasure):
    name = "cka"
    settings = ("kernels",)

    def __init__(self, backend: Backend | None = None):
        self.backend = backend or resolve()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], backend: Backend) -> "LinearCKA":
        return cls(backend)

    def prepare(self, parent: list[Tensor], n: int) -> list[list[Tensor]]:
        groups = parent[0].shape[0] // n
        return [[centred_gram(a[g * n:(g + 1) * n]).to(a.dtype) for a in parent] for g in range(groups)]

    def score(self, hidden: list[list[Tensor]], stacked: list[Tensor] | None, states: list, n: int) -> Tensor:
        groups = len(states)
        out = torch.zeros(groups, len(hidden[0]), device=hidden[0][0].device)
        for l in range(len(hidden)):
            if self.backend.native_similarity:                           # every network and group in one call
                grams, mean_energy = _centred_grams_native(hidden[l], n, groups)
                for g in range(groups):
                    out[g] += 1.0 - cka_from_centred(states[g][l], grams[g], mean_energy[g])
                continue
            for g in range(groups):
                rows = slice(g * n, (g + 1) * n)
                if stacked is not None:                                  # one batched product
                    units = stacked[l][:, :, rows]                           # (pop, h, n)
                    mean = units.mean(-1, keepdim=True)
                    c = units - mean
                    grams, mean_energy = torch.bmm(c.transpose(1, 2), c), n * mean.square().sum((1, 2))
                else:                                                    # one product per network
                    means = [a[rows].mean(0, keepdim=True) for a in hidden[l]]
                    grams = torch.stack([(lambda c: c @ c.T)(a[rows] - m) for a, m in zip(hidden[l], means)])
                    mean_energy = n * torch.stack([m.square().sum() for m in means])
                out[g] += 1.0 - cka_from_centred(states[g][l], grams, mean_energy)
        return out

    def reference(self, state: list[Tensor], child: list[Tensor]) -> float:
        """Feature-space formula in float64: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``."""
        total = 0.0
        for x, y in zip(state, child):
            xc, yc = x - x.mean(0), y.double() - y.double().mean(0)
            den = float(torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))
            total += 1.0 - (float(torch.linalg.norm(yc.T @ xc) ** 2) / den if den > 0 else 0.0)
        return total


def _centred_grams_native(acts: list[Tensor], n: int, groups: int) -> tuple[Tensor, Tensor]:
    """Centred Grams ``(G, pop, n, n)`` of networks of any widths and their ``n * |mean|^2``
    ``(G, pop)``, from one threaded call of the C Gram kernel, which centres each network's
    features over each group of ``n`` points as it reads them (nothing copied first)."""
    grams, energy = native.grams_acts(acts, n, centre=True)             # sets in order network * G + group
    return grams.view(len(acts), groups, n, n).transpose(0, 1), energy.view(len(acts), groups).T
