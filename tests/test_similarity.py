"""t-SNE joint probabilities and KL: reference == scikit-learn, fast == reference, degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import squareform
from sklearn.manifold._t_sne import _joint_probabilities

from ecomp.kernels.tsne_torch import (MACHINE_EPSILON, calibrate, joint_probabilities, joint_probabilities_reference,
                              kl_divergence, off_diagonal, shifted_distances, shifted_distances_stacked,
                              squared_distances, with_diagonal)


def sklearn_p(points: torch.Tensor, perplexity: float) -> np.ndarray:
    d = squared_distances([points.double()])[0].numpy().astype(np.float32)
    p = squareform(_joint_probabilities(d, perplexity, 0))
    np.fill_diagonal(p, MACHINE_EPSILON)
    return p


def embeddings(width: int, seed: int, n: int = 100) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, width, generator=g) * 2 + torch.randn(n, 1, generator=g))


@pytest.mark.parametrize("width", [1, 3, 17, 64, 256])
@pytest.mark.parametrize("perplexity", [5.0, 30.0])
def test_reference_equals_sklearn(width, perplexity):
    x = embeddings(width, width)
    d = squared_distances([x.double()])[0].numpy()
    assert np.allclose(joint_probabilities_reference(d, perplexity), sklearn_p(x, perplexity), rtol=1e-9, atol=0)


@pytest.mark.parametrize("width", [2, 17, 64, 256])
def test_fast_equals_reference(width):
    xs = [embeddings(width, s) for s in range(4)]
    fast = joint_probabilities(squared_distances(xs), 30.0).double().numpy()
    for k, x in enumerate(xs):
        ref = sklearn_p(x, 30.0)
        assert np.abs(fast[k] - ref).max() <= 1e-4 * ref.max()


def test_fast_kl_within_1e4_relative_of_reference():
    parent = embeddings(256, 0)
    children = [embeddings(w, s + 1) for s, w in enumerate([5, 40, 100, 200])]
    p = torch.from_numpy(sklearn_p(parent, 30.0))
    q_ref = [torch.from_numpy(sklearn_p(c, 30.0)) for c in children]
    q_fast = joint_probabilities(squared_distances(children), 30.0).double()
    for k in range(len(children)):
        ref, fast = float(kl_divergence(p, q_ref[k])), float(kl_divergence(p, q_fast[k]))
        assert abs(fast - ref) <= 1e-4 * abs(ref)


def test_off_diagonal_round_trip():
    a = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    off = off_diagonal(a)
    assert off.shape == (2, 5, 4)
    assert torch.equal(off[1, 2], torch.tensor([35.0, 36.0, 38.0, 39.0]))
    back = with_diagonal(off, fill=-1.0)
    mask = ~torch.eye(5, dtype=torch.bool)
    assert torch.equal(back[:, mask], a[:, mask]) and (back.diagonal(dim1=1, dim2=2) == -1).all()


@pytest.mark.parametrize("case", ["dead", "identical_rows", "width1_identical", "duplicates", "huge_scale"])
def test_degenerate_activations_stay_finite(case):
    n = 100
    g = torch.Generator().manual_seed(0)
    x = {
        "dead": torch.zeros(n, 40),                                    # all ReLUs dead
        "identical_rows": torch.ones(n, 7) * 3.0,                      # every point the same
        "width1_identical": torch.full((n, 1), 0.5),                   # a width-1 child
        "duplicates": torch.randn(5, 8, generator=g).repeat(20, 1),   # 20 copies of 5 points
        "huge_scale": torch.randn(n, 8, generator=g) * 1e4,
    }[case]
    p = joint_probabilities(squared_distances([x]), 30.0)[0]
    assert torch.isfinite(p).all() and (p > 0).all()
    assert abs(float(p.sum()) - 1.0) < 1e-4
    ref = torch.from_numpy(sklearn_p(x, 30.0)).float()
    assert torch.allclose(p, ref, rtol=1e-3, atol=1e-7)
    parent = embeddings(64, 1)
    kl = kl_divergence(torch.from_numpy(sklearn_p(parent, 30.0)), p.double())
    assert torch.isfinite(kl)


def test_shifted_distances_of_stacks_equal_set_by_set():
    """Stacked (G, N, width) inputs give the same rows as one set at a time, g-major."""
    sets = [[embeddings(w, 10 * g + w) for g in range(3)] for w in (4, 33)]           # M = 2, G = 3
    stacked = shifted_distances([torch.stack(s) for s in sets])
    one_by_one = torch.cat([shifted_distances([sets[m][g]]) for g in range(3) for m in range(2)])
    assert torch.allclose(stacked, one_by_one, rtol=1e-5, atol=1e-4)
    d = squared_distances([sets[1][2].double()])[0]
    off = off_diagonal(d[None])[0]
    assert torch.allclose(one_by_one[500:600].double(), off - off.min(1, keepdim=True).values, rtol=1e-4, atol=1e-2)


def test_calibrate_from_a_guess_gives_the_same_probabilities():
    xs = [embeddings(w, w) for w in (5, 60, 200)]
    d = shifted_distances(xs)
    plain, beta = calibrate(d, 30.0)
    guess = beta * d.mean(1).double() * 1.3                    # a 30 % wrong guess
    guessed, _ = calibrate(d, 30.0, beta_mean=guess)
    assert torch.allclose(plain, guessed, rtol=1e-3, atol=1e-7)
    bad = torch.full_like(guess, float("nan"))                  # unusable guesses fall back
    assert torch.allclose(plain, calibrate(d, 30.0, beta_mean=bad)[0])


def test_stacked_distances_equal_set_by_set():
    """One architecture: (C, width, G * N) stacks give the rows of C * G separate sets, g-major."""
    c, width, g_n, n = 3, 9, 2, 100
    layers = [torch.relu(torch.randn(c, width, g_n * n, generator=torch.Generator().manual_seed(l))) for l in range(2)]
    stacked = shifted_distances_stacked(layers, n)
    sets = [layers[l][i, :, s * n:(s + 1) * n].T for s in range(g_n) for l in range(2) for i in range(c)]
    assert torch.allclose(stacked, shifted_distances(sets), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("every", [2, 3, 5])
def test_calibrate_without_a_host_check_every_iteration_gives_the_same_rows(every):
    """The GPU setting (``check_every`` > 1: no active set, the rows left counted only every few
    iterations, so one host synchronisation per ``every`` iterations) gives every row the same
    probabilities and precision as the per-iteration loop the CPU runs."""
    xs = [embeddings(w, w) for w in (5, 60, 200)]
    d = shifted_distances(xs)
    guess = calibrate(d, 30.0)[1] * d.mean(1).double() * 1.3
    for beta_mean in (None, guess):
        s1, s2 = {}, {}
        p1, b1 = calibrate(d, 30.0, beta_mean=beta_mean, stats=s1)
        p2, b2 = calibrate(d, 30.0, beta_mean=beta_mean, stats=s2, check_every=every)
        assert torch.allclose(p1, p2, rtol=1e-6, atol=1e-9) and torch.allclose(b1, b2, rtol=1e-12)
        assert s1["checks"] == s1["iterations"] and s2["checks"] <= -(-s2["iterations"] // every)
