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
* :func:`shifted_distances`, :func:`calibrate`, :func:`kl_from_conditionals`
  (and :func:`joint_probabilities` built on them): many matrices at once in
  float32, a safeguarded Halley iteration on ``beta`` with per-row convergence
  and an active set that shrinks as rows converge, on off-diagonal entries only,
  in as few passes over memory as we could make it.

The same arithmetic, fused per point set in C, is :mod:`ecomp.kernels.native` (the default where a C
compiler is found); this module's fast path is its fallback and, with the reference, its oracle.
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
    """``(..., N, N) -> (prod(...), N, N - 1)``: each row without its diagonal entry (a copy).

    Only each ``(N, N)`` matrix needs to be contiguous (a transposed stack is fine).
    """
    n = a.shape[-1]
    flat = a.flatten(-2)[..., 1:].unflatten(-1, (n - 1, n + 1))[..., :n]     # views
    return flat.reshape(-1, n, n - 1)


def with_diagonal(offdiag: Tensor, fill: float = 0.0) -> Tensor:
    """Inverse of :func:`off_diagonal`: ``(M, N, N - 1) -> (M, N, N)`` with ``fill`` on the diagonal."""
    m, n, _ = offdiag.shape
    full = offdiag.new_empty((m, n * n))
    full[:, 1:].view(m, n - 1, n + 1)[:, :, :n] = offdiag.reshape(m, n - 1, n)
    full[:, ::n + 1] = fill                                    # the diagonal: flat positions k (N + 1)
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
def grams(points: list[Tensor]) -> Tensor:
    """Gram matrices ``(M, G, N, N)`` of ``M`` stacks of ``G`` point sets ``(G, N, width)``
    (an ``(N, width)`` entry is a stack of one). Widths may differ between entries; one
    batched product per entry."""
    stacks = [a if a.dim() == 3 else a.unsqueeze(0) for a in points]
    n_stack, n = stacks[0].shape[0], stacks[0].shape[1]
    g = stacks[0].new_empty(len(stacks), n_stack, n, n)
    for m, a in enumerate(stacks):
        torch.bmm(a, a.transpose(1, 2), out=g[m])              # Gram (G, N, N)
    return g


def grams_stacked(stacked: list[Tensor], n: int) -> Tensor:
    """Gram matrices ``(G, L, C, N, N)`` of a population whose ``C`` networks all have the
    same widths: ``stacked[l]`` is layer ``l`` of all of them, ``(C, width_l, G * N)`` (what
    the batched forward pass returns: each network's activations on ``G`` batches of ``N``
    points, transposed). One batched product per layer and batch instead of one per network.
    """
    c, _, gn = stacked[0].shape
    n_stack = gn // n
    g = stacked[0].new_empty(n_stack, len(stacked), c, n, n)
    for l, t in enumerate(stacked):
        v = t.view(c, t.shape[1], n_stack, n)
        for s in range(n_stack):
            a = v[:, :, s, :]                                  # (C, width, N)
            torch.bmm(a.transpose(1, 2), a, out=g[s, l])       # Gram (C, N, N)
    return g


def shifted_distances(points: list[Tensor]) -> Tensor:
    """Each point's squared distances to the other points of its set, shifted so that each
    row's minimum is 0: ``M`` point sets of ``(N, width)`` -> ``(M * N, N - 1)``, or ``M``
    stacks of ``G`` sets ``(G, N, width)`` -> ``(G * M * N, N - 1)`` ordered by ``g`` first
    (set ``m`` of stack ``g`` is matrix ``g * M + m``). Widths may differ between entries.

    ``d_ij - min_j d_ij`` does not depend on ``|x_i|^2``, so it is computed as
    ``t_ij - min_j t_ij`` with ``t_ij = |x_j|^2 - 2 <x_i, x_j>``: one Gram product per
    entry (a batched one for a stack) and three passes (``t``, the off-diagonal copy,
    the shift). The shift leaves the conditional probabilities and entropies unchanged
    and keeps ``Z >= 1``.
    """
    return _shift_rows(_gram_to_t(grams(points)).transpose(0, 1))   # (G * M * N, N - 1)


def shifted_distances_stacked(stacked: list[Tensor], n: int) -> Tensor:
    """:func:`shifted_distances` for a population whose networks all have the same widths
    (see :func:`grams_stacked`). Returns ``(G * L * C * N, N - 1)`` in the same order as
    :func:`shifted_distances` given the ``L * C`` sets layer-major.
    """
    return _shift_rows(_gram_to_t(grams_stacked(stacked, n)))


def _gram_to_t(g: Tensor) -> Tensor:
    """In place, Gram matrices ``(..., N, N)`` -> ``t_ij = |x_j|^2 - 2 <x_i, x_j>``."""
    sq = g.diagonal(dim1=-2, dim2=-1).clone()                  # (..., N) squared norms
    return torch.add(sq.unsqueeze(-2), g, alpha=-2.0, out=g)


def _shift_rows(t: Tensor) -> Tensor:
    """``(..., N, N)`` -> ``(prod(...) * N, N - 1)``: off-diagonal rows minus their minimum."""
    n = t.shape[-1]
    d = off_diagonal(t).view(-1, n - 1)
    return d.sub_(d.min(1, keepdim=True).values)


@torch.no_grad()
def calibrate(d: Tensor, perplexity: float, tol: float = 1e-5, max_iter: int = 60,
              beta_mean: Tensor | None = None, stats: dict | None = None,
              check_every: int = 1) -> tuple[Tensor, Tensor]:
    """``(R, N - 1)`` shifted distances -> the rows' Gaussian conditionals (each row sums
    to 1) and their precisions ``beta`` ``(R,)`` (float64).

    ``beta_mean``, if given, is a guess of ``beta * mean(d)`` for each row. That product
    is scale-free, so a child network's rows share it closely with the parent's rows on
    the same images (the evaluator passes the parent's): starting there saves about one
    full iteration. Rows without a usable guess start from the expansion below.

    Overwrites nothing in ``d``. Safeguarded Halley iteration on ``beta``: ``H(beta) = log Z +
    beta E[d]``, ``dH/dbeta = -beta Var[d]``. Each row keeps a bracket (``H`` decreases
    in ``beta``); a step that leaves it bisects instead. Exponents are clamped
    at ``-80`` (``e^-80`` is far below the ``eps`` floor of ``P``, and denormal results
    make ``exp`` six times slower). Rows whose distances are all equal (dead ReLUs, a
    width-1 layer with identical values) have a uniform conditional for every ``beta``.

    The step is Halley's (cubic convergence; it needs ``E[d^3]``, one cheap pass more):
    from the second-order start most rows converge in three or four evaluations, from the
    parent's guess in two or three (``stats`` counts them). One iteration is nine passes over
    the active rows:
    ``-beta d``, clamp, ``exp``, and four row sums (``Z`` and ``sum e d^j``, j = 1..3). A
    converged row keeps its ``beta``, so its exponentials are already final: they are
    kept (no extra ``exp`` pass at the end). While more than 80 % of the rows are active,
    converged rows ride along frozen; below that, the active set is gathered.

    ``check_every``: how often the loop asks whether every row has converged. Counting the rows
    left and gathering the active set reads a number back to the host, which on a GPU waits for
    every queued kernel; the backend's ``host_check_every`` is 1 on the CPU (where that costs
    nothing and the active set saves work) and 3 on a GPU. Above 1, no active set is gathered (converged
    rows ride along frozen: their ``beta`` and exponentials do not change), so the loop makes one
    host synchronisation per ``check_every`` iterations. The result per row is the same either
    way; ``stats["checks"]`` counts the synchronisations.
    """
    r, k = d.shape
    target = math.log(perplexity)
    e_all = torch.empty_like(d)                                # exponentials, then P
    scratch = torch.empty_like(d)
    # Start where the second-order expansion H(beta) ~ log(N-1) - beta^2 Var0[d] / 2 meets the
    # target (Var0: the row's plain variance).
    mean0 = d.sum(1).double() / k
    var0 = (torch.mul(d, d, out=scratch).sum(1).double() / k - mean0 * mean0).clamp(min=0.0)
    gap = max(math.log(k) - target, 1e-3)
    beta = torch.sqrt(2.0 * gap / var0.clamp(min=1e-30))
    if beta_mean is not None:
        guess = beta_mean.to(beta) / mean0
        beta = torch.where(torch.isfinite(guess) & (guess > 0), guess, beta)
    lo = torch.zeros_like(beta)                                # bracket on beta
    hi = torch.full_like(beta, math.inf)
    z_all = torch.empty(r, dtype=d.dtype, device=d.device)     # row sums of the final exponentials
    rows = None                                                # None: every row is in the active set
    da, e = d, e_all
    sizes = []
    every = max(1, check_every)
    checks = 0
    for it in range(max_iter):
        a = da.shape[0]
        sizes.append(a)
        b = beta if rows is None else beta[rows]
        torch.mul(da, (-b).to(d.dtype).unsqueeze(1), out=e).clamp_(min=-80.0).exp_()
        z = e.sum(1)
        t = torch.mul(e, da, out=scratch[:a])
        zd = z.double()
        m1 = t.sum(1).double() / zd                            # E[d]
        m2 = t.mul_(da).sum(1).double() / zd                   # E[d^2]
        m3 = t.mul_(da).sum(1).double() / zd                   # E[d^3]
        var = (m2 - m1 * m1).clamp(min=0.0)
        diff = torch.log(zd) + b * m1 - target                 # H(beta) - log(perplexity)
        done = (diff.abs() <= tol) | (var * b * b <= 1e-12)
        up = diff > 0                                          # entropy too high: beta must grow
        l = torch.where(up, b, lo if rows is None else lo[rows])
        h = torch.where(up, hi if rows is None else hi[rows], b)
        # Halley on beta: H' = -beta Var[d], H'' = -Var[d] + beta k3 (k3: third central moment)
        d1 = -b * var
        d2 = -var + b * (m3 - 3.0 * m1 * m2 + 2.0 * m1 * m1 * m1)
        step = b - 2.0 * diff * d1 / (2.0 * d1 * d1 - diff * d2)
        bisect = torch.where(torch.isinf(h), b * 2.0, (l + h) / 2.0)
        new = torch.where(done, b, torch.where((step > l) & (step < h), step, bisect))
        if every > 1 and (it + 1) % every and it < max_iter - 1:    # no look at the host this time
            beta, lo, hi, z_all = new, l, h, z
            continue
        n_left = int((~done).sum())
        checks += 1
        if rows is None:
            beta, lo, hi = new, l, h
            z_all = z
        else:
            beta.index_copy_(0, rows, new)
            lo.index_copy_(0, rows, l)
            hi.index_copy_(0, rows, h)
        if n_left == 0 or it == max_iter - 1:
            if rows is not None:
                e_all.index_copy_(0, rows, e)
                z_all.index_copy_(0, rows, z)
            break
        if every == 1 and n_left <= 0.8 * a:   # gathering copies the kept rows once; an iteration reads them ~9 times
            keep = (~done).nonzero().squeeze(1)
            if rows is None:                                   # done rows' exponentials are in e_all
                rows = keep
            else:
                fin = done.nonzero().squeeze(1)
                e_all.index_copy_(0, rows.index_select(0, fin), e.index_select(0, fin))
                z_all.index_copy_(0, rows.index_select(0, fin), z.index_select(0, fin))
                rows = rows.index_select(0, keep)
            da = d.index_select(0, rows)
            e = torch.empty_like(da)
    if stats is not None:
        stats["iterations"], stats["active"], stats["checks"] = it + 1, sizes, checks
    return e_all.div_(z_all.unsqueeze(1)), beta


@torch.no_grad()
def joint_probabilities(sqdist: Tensor, perplexity: float, tol: float = 1e-5) -> Tensor:
    """``(M, N, N)`` squared distances -> joint P of every point set, diagonal eps (fast path)."""
    m, n, _ = sqdist.shape
    cond, _ = calibrate(_shift_rows(sqdist), perplexity, tol)
    return symmetrise(with_diagonal(cond.view(m, n, n - 1)))


@torch.no_grad()
def kl_from_conditionals(p: Tensor, cond: Tensor) -> Tensor:
    """``KL(P_l || Q_lc)`` for ``L`` parent joints ``p`` ``(L, N, N)`` and ``L * C`` child
    conditionals ``cond`` ``(L * C, N, N - 1)`` (layer-major) -> ``(L, C)``.

    ``Q`` is :func:`symmetrise` of the conditionals. The sum is taken of
    ``p (log p - log q)`` element by element (not as ``sum p log p - sum p log q``),
    so a child identical to the parent gets exactly 0, not float32 noise.
    """
    n_layers, n = p.shape[0], p.shape[1]
    q = symmetrise(with_diagonal(cond))                        # (L * C, N, N)
    ratio = torch.sub(p.log().unsqueeze(1), q.view(n_layers, -1, n, n).log_(), out=q.view(n_layers, -1, n, n))
    return torch.einsum("lck,lk->lc", ratio.view(n_layers, -1, n * n), p.reshape(n_layers, n * n))
