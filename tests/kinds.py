"""The layer kinds the capability tests run over (``tests/test_kinds.py``): a new kind is one more
entry here, a small random parent of that kind and the features of one of its input images."""

from __future__ import annotations

import torch

from ecomp.nets import convnet, resnet
from ecomp.nets.mlp import MLP
from ecomp.nets.structure import Structure


def mlp(seed: int = 0) -> Structure:
    g = torch.Generator().manual_seed(seed)
    widths = [36, 12, 10, 5]
    return MLP([(torch.randn(widths[i + 1], widths[i], generator=g) / widths[i] ** 0.5,
                 torch.randn(widths[i + 1], generator=g) * 0.1) for i in range(len(widths) - 1)])


def cnn(seed: int = 0) -> Structure:
    plan = convnet.lenet5((1, 6, 6), 5, channels=(4, 6), kernel=3, padding=(1, 1), pool=1, hidden=(8,))
    torch.manual_seed(seed)
    return convnet.from_module(convnet.build_module(plan), plan)


def resnet8(seed: int = 0) -> Structure:
    """A ResNet-8 (widths 4, 6, 8) whose BatchNorms hold random statistics, folded when read."""
    plan = resnet.cifar_resnet((1, 6, 6), 5, 8, (4, 6, 8))
    torch.manual_seed(seed)
    model = plan.build(batchnorm=True)
    g = torch.Generator().manual_seed(seed + 100)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.2, 0.2), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                              (m.bias, -0.2, 0.2)):
                t.data.copy_(torch.empty(t.shape).uniform_(lo, hi, generator=g))
    return plan.network(model.eval())


KINDS = {"mlp": mlp, "cnn": cnn, "resnet": resnet8}   # each parent reads 36 features (6 x 6 grey images) into 5 classes
FEATURES = 36


def relu_groups(net: Structure) -> list[int]:
    """The group whose channels each ``nn.ReLU`` of ``net.to_module()`` outputs, in module order:
    written out per kind from how its module is built, not from the kind's group rules."""
    if net.kind != "resnet":
        return list(range(len(net.units)))
    out, stream, g = [0], 0, 1
    for s, (n, proj) in enumerate(zip(net.plan.blocks, net.plan.projections)):
        for b in range(n):
            inner, g = g, g + 1
            if b == 0 and proj:
                stream, g = g, g + 1
            out += [inner, stream]               # the block's inner ReLU, then its output's
    return out


def reference_scores(net: Structure) -> list[torch.Tensor]:
    """Each group's units' L1 scores found without the kind's rules: a chain's rows; a residual
    network's by Torch-Pruning's group L1 over its dependency graph (writers' rows, readers' inputs)."""
    if net.kind != "resnet":
        return [w.abs().flatten(1).sum(1) for w, _ in net.layers[:-1]]
    import torch_pruning as tp

    model = net.to_module()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, net.in_features))
    imp = tp.importance.MagnitudeImportance(p=1, group_reduction="sum", normalizer=None)
    writers = [model.stem] + [m for blk in model.blocks for m in (blk.conv1, blk.conv2)]
    order = {id(m): i for i, m in enumerate(writers)}
    scores: dict[int, torch.Tensor] = {}
    for m in writers:                              # a group is numbered by its first writer in module order
        group = graph.get_pruning_group(m, tp.prune_conv_out_channels, idxs=list(range(m.out_channels)))
        first = min(order[id(d.target.module)] for d, _ in group if id(d.target.module) in order)
        scores.setdefault(first, imp(group))
    return [scores[k] for k in sorted(scores)]
