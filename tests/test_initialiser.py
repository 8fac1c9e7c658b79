"""The L1 initialiser against a direct computation."""

from __future__ import annotations

import numpy as np
import torch

from conftest import random_layers, random_mlp
from ecomp.core.initialiser import keep_ratios, l1_population, pruned_width


def test_keep_ratios_are_the_authors_amounts():
    amounts = [1 - k for k in keep_ratios(100, 0.9, 0.207)]
    assert np.allclose(amounts, np.arange(0.1, 0.8, 0.007)[:100], atol=1e-12)
    widths = [pruned_width(256, k) for k in keep_ratios(100, 0.9, 0.207)]
    assert widths[0] == 256 - 25 and widths[-1] == 256 - int(0.793 * 256)
    assert abs(np.mean(widths) / 256 - 0.555) < 0.01   # the reference's initial mean compression


def test_kept_neurons_are_the_largest_l1_norms():
    g = torch.Generator().manual_seed(0)
    parent = random_mlp([20, 16, 16, 4], g)
    pop = l1_population(parent, 4, 0.75, 0.25)
    for i in range(pop.size):
        ind = pop.individual(i)
        prev = None
        for l in range(2):
            w, b = parent.layers[l]
            norms = w.abs().sum(1)
            h = pop.widths[i][l]
            keep = torch.topk(norms, h).indices.sort().values      # direct: the h largest norms
            expected_w = w[keep] if prev is None else w[keep][:, prev]
            assert torch.equal(ind[l][0], expected_w) and torch.equal(ind[l][1], b[keep])
            prev = keep
        assert torch.equal(ind[2][0], parent.layers[2][0][:, prev]) and torch.equal(ind[2][1], parent.layers[2][1])
    # amounts 0.25, 0.417, 0.583, 0.75 remove int(amount * 16) = 4, 6, 9, 12 neurons per layer
    assert pop.widths == [(12, 12), (10, 10), (7, 7), (4, 4)]
