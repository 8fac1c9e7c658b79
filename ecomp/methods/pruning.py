"""Structured pruning of a parent's hidden neurons with Torch-Pruning.

Torch-Pruning (Fang et al., CVPR 2023) supplies the importance criteria and the
surgery: its dependency graph removes a hidden neuron's row, bias and the matching
input column of the next layer together. EComp's own rule decides how many neurons
each hidden layer keeps (:func:`ecomp.core.initialiser.pruned_width`) and every ranking is
taken on the intact parent, so ``importance=l1`` gives exactly the sub-network that
EComp's initial population holds at the same keep ratio (a test checks it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ecomp.core.initialiser import pruned_width
from ecomp.nets.network import Layers, layers_of, linear_layers, model_from_layers

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


def _scorer(importance: str):
    import torch_pruning as tp

    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}: one of {', '.join(IMPORTANCES)}")
    cls, kwargs = IMPORTANCES[importance]
    return getattr(tp.importance, cls)(**kwargs)


def structured_prune(parent: Layers, keep: float, importance: str = "l1",
                     data: tuple[Tensor, Tensor] | None = None) -> Layers:
    """A copy of ``parent`` keeping ``pruned_width(width, keep)`` neurons of every hidden layer.

    ``data`` ``(x, y)``: the images whose cross-entropy gradient the ``taylor`` criterion
    needs (the run's training subset). Kept neurons stay in their original order.
    """
    import torch_pruning as tp

    model = model_from_layers(parent)
    x_example = parent[0][0].new_zeros(1, parent[0][0].shape[1])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x_example)
    hidden = linear_layers(model)[:-1]
    if importance in NEEDS_GRADIENTS:
        if data is None:
            raise ValueError(f"importance={importance!r} needs data for its gradients")
        model.zero_grad()
        F.cross_entropy(model(data[0]), data[1]).backward()
    scorer = _scorer(importance)
    groups = [graph.get_pruning_group(lin, tp.prune_linear_out_channels, idxs=list(range(lin.out_features)))
              for lin in hidden]
    scores = [scorer(g) for g in groups]                # every ranking on the intact parent
    for lin, score in zip(hidden, scores):
        order = torch.argsort(score, descending=True, stable=True)
        drop = sorted(order[pruned_width(len(score), keep):].tolist())
        if drop:
            graph.get_pruning_group(lin, tp.prune_linear_out_channels, idxs=drop).prune()
    return [(w.clone(), b.clone()) for w, b in layers_of(model)]
