"""Structured pruning of a parent's hidden neurons with Torch-Pruning.

Torch-Pruning (Fang et al., CVPR 2023) supplies the importance criteria and the
surgery: its dependency graph removes a hidden neuron's row, bias and the matching
input column of the next layer together, and on a residual network a whole channel group (every
convolution that writes the channels, every one that reads them). EComp's own rule decides how
many units each group keeps (:func:`ecomp.core.initialiser.pruned_width`) and every ranking is
taken on the intact parent, so ``importance=l1`` gives exactly the sub-network that
EComp's initial population holds at the same keep ratio (a test checks it): on a chain the L1
norm of a unit's own row (``group_reduction="first"``), on a residual network of every weight
the channel owns (``"sum"``), as the kind's :meth:`~ecomp.nets.structure.Structure.l1_scores` says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ecomp.core.initialiser import pruned_width
from ecomp.nets.structure import Structure

# importance criterion -> (Torch-Pruning class name, keyword arguments). "first": the score of a
# neuron is that of its own incoming row, as EComp's L1 ranking; "mean": Torch-Pruning's group
# score, the row and the next layer's matching column averaged.
IMPORTANCES = {
    "l1": ("MagnitudeImportance", {"p": 1, "group_reduction": "first", "normalizer": None}),
    "l2": ("MagnitudeImportance", {"p": 2, "group_reduction": "first", "normalizer": None}),
    "group_l1": ("MagnitudeImportance", {"p": 1, "group_reduction": "mean", "normalizer": None}),
    "taylor": ("TaylorImportance", {"group_reduction": "first", "normalizer": None}),
}
NEEDS_GRADIENTS = {"taylor"}


def _scorer(importance: str, reduction: str):
    import torch_pruning as tp

    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}: one of {', '.join(IMPORTANCES)}")
    cls, kwargs = IMPORTANCES[importance]
    if kwargs["group_reduction"] == "first":            # a unit's own weights: the kind says which
        kwargs = {**kwargs, "group_reduction": reduction}
    return getattr(tp.importance, cls)(**kwargs)


def structured_prune(parent: Structure, keep: float, importance: str = "l1",
                     data: tuple[Tensor, Tensor] | None = None) -> Structure:
    """A copy of ``parent`` keeping ``pruned_width(units, keep)`` units of every group: hidden
    neurons, a CNN's convolution channels (its dependency graph removes a filter, its bias and the
    next layer's matching input channel, or after the Flatten its block of columns), a residual
    network's channel groups (each pruned through the first layer that writes it).

    ``data`` ``(x, y)``: the images whose cross-entropy gradient the ``taylor`` criterion
    needs (the run's training subset). Kept units stay in their original order.
    """
    import torch_pruning as tp

    model = parent.to_module()
    weights = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    x_example = weights[0].weight.new_zeros(1, parent.in_features)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x_example)
    first: dict[int, int] = {}                          # each group's first writer
    for l, (writes, _) in enumerate(parent.layer_groups()):
        if writes is not None:
            first.setdefault(writes, l)
    hidden = [weights[first[g]] for g in range(len(parent.units))]
    if importance in NEEDS_GRADIENTS:
        if data is None:
            raise ValueError(f"importance={importance!r} needs data for its gradients")
        model.zero_grad()
        F.cross_entropy(model(data[0]), data[1]).backward()
    scorer = _scorer(importance, parent.l1_reduction)
    def how(m):
        return tp.prune_conv_out_channels if isinstance(m, torch.nn.Conv2d) else tp.prune_linear_out_channels

    groups = [graph.get_pruning_group(m, how(m), idxs=list(range(m.weight.shape[0]))) for m in hidden]
    scores = [scorer(g) for g in groups]                # every ranking on the intact parent
    for m, score in zip(hidden, scores):
        order = torch.argsort(score, descending=True, stable=True)
        drop = sorted(order[pruned_width(len(score), keep):].tolist())
        if drop:
            graph.get_pruning_group(m, how(m), idxs=drop).prune()
    return parent.from_module(model)
