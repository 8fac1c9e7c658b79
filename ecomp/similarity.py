"""t-SNE joint probabilities and the KL similarity between two networks' hidden layers.

For one set of points (a layer's activations on a batch): squared Euclidean
distances; for each point a Gaussian conditional distribution over the others
whose precision ``beta`` gives perplexity ``k`` (entropy ``log k`` nats);
``P = (P_cond + P_cond^T) / sum``, floored at double machine epsilon. This is
scikit-learn's ``_joint_probabilities``. The similarity of a child to the
parent is ``sum over layers of KL(P_parent || P_child)`` summed over all
ordered pairs ``i != j`` (both triangles).

Two implementations:

* :func:`joint_probabilities_reference`: one matrix at a time, float64,
  scikit-learn's bisection on ``beta`` step for step. The test oracle.
* :func:`joint_probabilities`: many matrices at once in float32, a safeguarded
  Newton iteration on ``log beta`` with per-row convergence and an active set
  that shrinks as rows converge, on off-diagonal entries only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

MACHINE_EPSILON = float(np.finfo(np.double).eps)
_EPSILON_DBL = 1e-8  # scikit-learn's floor for a row sum in the bisection


# --------------------------------------------------------------------------- shared pieces
def squared_distances(points: list[Tensor], out: Tensor | None = None) -> Tensor:
    """``(M, N, N)`` squared distances for ``M`` point sets of ``N`` points each (any widths)."""
    n = points[0].shape[0]
    g = out if out is not None else points[0].new_empty(len(points), n, n)
    for m, a in enumerate(points):
        torch.mm(a, a.T, out=g[m])                             # Gram (N, N)
    sq = g.diagonal(dim1=1, dim2=2).clone()                    # (M, N) squared norms
    g.mul_(-2).add_(sq.unsqueeze(2)).add_(sq.unsqueeze(1)).clamp_(min=0)
    g.diagonal(dim1=1, dim2=2).zero_()
    return g


def off_diagonal(a: Tensor) -> Tensor:
    """``(M, N, N) -> (M, N, N - 1)``: each row without its diagonal entry (a copy)."""
    m, n, _ = a.shape
    return a.reshape(m, n * n)[:, 1:].reshape(m, n - 1, n + 1)[:, :, :n].reshape(m, n, n - 1)


def with_diagonal(offdiag: Tensor, fill: float = 0.0) -> Tensor:
    """Inverse of :func:`off_diagonal`: ``(M, N, N - 1) -> (M, N, N)`` with ``fill`` on the diagonal."""
    m, n, _ = offdiag.shape
    full = offdiag.new_full((m, n * n), fill)
    full[:, 1:].view(m, n - 1, n + 1)[:, :, :n] = offdiag.reshape(m, n - 1, n)
    return full.view(m, n, n)


def symmetrise(cond: Tensor) -> Tensor:
    """``(M, N, N)`` conditional -> joint: ``max((C + C^T) / sum, eps)``; diagonal = eps."""
    p = cond + cond.transpose(1, 2)
    total = p.sum(dim=(1, 2), keepdim=True).clamp_(min=MACHINE_EPSILON)
    return p.div_(total).clamp_(min=MACHINE_EPSILON)


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """``sum_{i != j} p log(p / q)`` for joint matrices ``(..., N, N)`` (diagonals are eps on both sides)."""
    return (p * (p.log() - q.log())).sum(dim=(-2, -1))


# --------------------------------------------------------------------------- reference
def conditional_probabilities_reference(sqdist: np.ndarray, perplexity: float,
                                        tol: float = 1e-5, max_iter: int = 100) -> np.ndarray:
    """scikit-learn's ``_binary_search_perplexity``, vectorised over rows, float64."""
    d = np.asarray(sqdist, dtype=np.float32).astype(np.float64)
    n = d.shape[0]
    target = math.log(perplexity)
    beta = np.ones(n)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    mask = ~np.eye(n, dtype=bool)
    done = np.zeros(n, dtype=bool)
    p = np.zeros((n, n))
    for _ in range(max_iter):
        e = np.exp(-d * beta[:, None]) * mask
        s = e.sum(1)
        s[s == 0.0] = _EPSILON_DBL
        pc = e / s[:, None]
        entropy = np.log(s) + beta * (d * pc).sum(1)
        diff = entropy - target
        p[~done] = pc[~done]
        done |= np.abs(diff) <= tol
        if done.all():
            break
        up = (diff > 0) & ~done
        down = (diff <= 0) & ~done
        lo[up] = beta[up]
        beta[up] = np.where(np.isinf(hi[up]), beta[up] * 2.0, (beta[up] + hi[up]) / 2.0)
        hi[down] = beta[down]
        beta[down] = np.where(np.isinf(lo[down]), beta[down] / 2.0, (beta[down] + lo[down]) / 2.0)
    return p


def joint_probabilities_reference(sqdist: np.ndarray, perplexity: float) -> np.ndarray:
    """``(N, N)`` joint P for one point set, exactly as scikit-learn (full matrix, diagonal eps)."""
    c = conditional_probabilities_reference(sqdist, perplexity)
    return symmetrise(torch.from_numpy(c)[None])[0].numpy()


def similarity_reference(parent_acts: list[Tensor], child_acts: list[Tensor], perplexity: float) -> float:
    """KL similarity of one child, one layer at a time, through the reference path."""
    total = 0.0
    for pa, ca in zip(parent_acts, child_acts):
        p = joint_probabilities_reference(squared_distances([pa.double()])[0].numpy(), perplexity)
        q = joint_probabilities_reference(squared_distances([ca.double()])[0].numpy(), perplexity)
        total += float(kl_divergence(torch.from_numpy(p), torch.from_numpy(q)))
    return total


# --------------------------------------------------------------------------- fast path
@torch.no_grad()
def conditional_probabilities(sqdist: Tensor, perplexity: float, tol: float = 1e-5,
                              max_iter: int = 60, stats: dict | None = None) -> Tensor:
    """``(M, N, N) -> (M, N, N - 1)``: the Gaussian conditionals of every row, off-diagonal.

    Safeguarded Newton on ``beta``: ``H(beta) = log Z + beta E[d]`` and
    ``dH/dbeta = -beta Var[d]``. Each row keeps a bracket (``H`` decreases in
    ``beta``); a Newton step that leaves it bisects instead. Distances are
    shifted by the row minimum, which leaves ``P`` and ``H`` unchanged and
    keeps ``Z >= 1``; exponents are clamped at ``-80`` (``e^-80`` is far below
    the ``eps`` floor of ``P``, and denormal results make ``exp`` ten times
    slower). Rows whose distances are all equal (dead ReLUs, a width-1 layer
    with identical values) have a uniform conditional for every ``beta``.
    Converged rows leave the active set, so late iterations touch few rows.
    """
    m, n, _ = sqdist.shape
    d = off_diagonal(sqdist).reshape(m * n, n - 1)            # (R, N-1), a fresh copy
    d.sub_(d.min(1, keepdim=True).values)                     # shifted: >= 0, row min 0
    target = math.log(perplexity)
    buf = torch.empty_like(d)
    # Start where the second-order expansion H(beta) ~ log(N-1) - beta^2 Var0[d] / 2 meets the
    # target (Var0: the row's plain variance): 3 to 4 Newton steps from the answer in practice.
    mean0 = d.mean(1).double()
    var0 = (torch.einsum("rn,rn->r", d, d).double() / (n - 1) - mean0 * mean0).clamp(min=0.0)
    gap = max(math.log(n - 1) - target, 1e-3)
    beta = torch.sqrt(2.0 * gap / var0.clamp(min=1e-30))
    lo = torch.zeros_like(beta)                               # bracket on beta
    hi = torch.full_like(beta, math.inf)
    rows = torch.arange(d.shape[0], device=d.device)          # rows still iterating
    da = d
    sizes = []
    for it in range(max_iter):
        sizes.append(int(rows.shape[0]))
        e = torch.mul(da, (-beta[rows]).to(d.dtype).unsqueeze(1), out=buf[:da.shape[0]])
        e.clamp_(min=-80.0).exp_()                            # (A, N-1)
        z = e.sum(1).double()
        s1 = torch.einsum("rn,rn->r", e, da)
        m1 = s1.double() / z
        e.mul_(da)
        var = (torch.einsum("rn,rn->r", e, da).double() / z - m1 * m1).clamp(min=0.0)
        b = beta[rows]
        diff = torch.log(z) + b * m1 - target
        done = (diff.abs() <= tol) | (var * b * b <= 1e-12)
        up = diff > 0                                         # entropy too high: beta must grow
        l = torch.where(up, b, lo[rows])
        h = torch.where(up, hi[rows], b)
        newton = b + diff / (b * var)                         # Newton on beta: dH/dbeta = -beta Var[d]
        bisect = torch.where(torch.isinf(h), b * 2.0, (l + h) / 2.0)
        new = torch.where(done, b, torch.where((newton > l) & (newton < h), newton, bisect))
        beta.index_copy_(0, rows, new)
        lo.index_copy_(0, rows, l)
        hi.index_copy_(0, rows, h)
        n_left = int((~done).sum())
        if n_left == 0:
            break
        if n_left <= rows.shape[0] // 2:                      # gather only when it halves the work
            keep = (~done).nonzero().squeeze(1)
            rows, da = rows.index_select(0, keep), da.index_select(0, keep)
        else:                                                 # converged rows ride along, frozen
            pass
    if stats is not None:
        stats["iterations"], stats["active"] = it + 1, sizes
    p = torch.mul(d, (-beta).to(d.dtype).unsqueeze(1), out=buf).clamp_(min=-80.0).exp_()
    p.div_(p.sum(1, keepdim=True))
    return p.view(m, n, n - 1)


@torch.no_grad()
def joint_probabilities(sqdist: Tensor, perplexity: float, tol: float = 1e-5) -> Tensor:
    """``(M, N, N)`` joint P of every point set, diagonal eps (fast path)."""
    cond = conditional_probabilities(sqdist, perplexity, tol)
    return symmetrise(with_diagonal(cond))
