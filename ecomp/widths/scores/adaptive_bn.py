"""``score=adaptive_bn``: EagleEye's adaptive BatchNorm (Li et al., ECCV 2020) for folded networks,
then the accuracy on the held-out images.

Every network here holds its BatchNorm folded into its convolutions (LeNet-5 has none at all),
so the recalibration first puts a BatchNorm back as a module after every convolution
(``to_module(batchnorm=True)``) and gives it, as its affine map, the parent's statistics of the
channel it came from: ``weight = sqrt(var + eps)`` and ``bias = mean`` of the parent's (folded)
convolution output of that channel, measured on the same ``bn_batches`` training batches.
Its running statistics are then reset and recomputed on those batches in training mode, as a
cumulative average (``momentum=None``), without gradients; in evaluation mode and folded back
(``from_module``) each kept channel is re-normalised to the mean and variance it had in the
parent. This is EagleEye's recalibration with the parent's affine; on the unpruned parent it
changes (almost) nothing, the batches' mean and variance being those it is mapped back to.

The statistics are BatchNorm's own: per batch the mean and the unbiased variance over images and
positions, averaged over the batches. Only convolutions are recalibrated (linear layers carry
no BatchNorm in these networks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ecomp.nets.structure import Structure, accuracy
from ecomp.widths.scores.base import Score, ScoreData


def convolutions(model: nn.Module, net: Structure) -> list[nn.Conv2d]:
    """``model``'s convolutions in the network's layer order (module order; checked by shape)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if any(c.weight.shape != w.shape for c, (w, _) in zip(convs, net.layers)):
        raise ValueError("the module's convolutions are not the network's first layers in order")
    return convs


def paired_batchnorms(model: nn.Module, convs: list[nn.Conv2d], x: Tensor) -> list[nn.BatchNorm2d]:
    """The BatchNorm that reads each convolution's output, found by running ``x`` once."""
    seen: dict[int, int] = {}
    found: dict[int, nn.BatchNorm2d] = {}
    hooks = [c.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(id(o), k)) for k, c in enumerate(convs)]
    hooks += [b.register_forward_hook(lambda m, i, o: found.__setitem__(seen[id(i[0])], m))
              for b in model.modules() if isinstance(b, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return [found[k] for k in range(len(convs))]


@torch.no_grad()
def conv_statistics(net: Structure, batches: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Per convolution of ``net``: ``(mean, var)`` per channel of its output, as a BatchNorm with
    ``momentum=None`` would record them over ``batches``."""
    model = net.to_module().eval()
    convs = convolutions(model, net)
    sums = [[0.0, 0.0] for _ in convs]

    def record(k):
        def hook(m, i, o):
            sums[k][0] = sums[k][0] + o.mean((0, 2, 3))
            sums[k][1] = sums[k][1] + o.transpose(0, 1).flatten(1).var(1, unbiased=True)
        return hook

    hooks = [c.register_forward_hook(record(k)) for k, c in enumerate(convs)]
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [(m / len(batches), v / len(batches)) for m, v in sums]


@torch.no_grad()
def recalibrate(net: Structure, kept: list[Tensor], parent_stats: list[tuple[Tensor, Tensor]],
                batches: list[Tensor]) -> Structure:
    """``net`` (pruned from the parent, keeping units ``kept[g]`` of group ``g``) with every
    convolution's output re-normalised on ``batches`` to the parent's statistics ``parent_stats``
    of the channels it kept (see the module's docstring)."""
    model = net.to_module(batchnorm=True)
    convs = convolutions(model, net)
    if not convs:
        return net
    bns = paired_batchnorms(model, convs, batches[0])
    groups = net.layer_groups()
    for k, bn in enumerate(bns):
        mean, var = parent_stats[k]
        idx = kept[groups[k][0]].to(mean.device)
        bn.weight.copy_(torch.sqrt(var[idx] + bn.eps))
        bn.bias.copy_(mean[idx])
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x in batches:
        model(x)
    model.eval()
    return net.from_module(model)


class AdaptiveBN(Score):
    name = "adaptive_bn"

    def __init__(self, parent: Structure, data: ScoreData, backend):
        super().__init__(parent, data, backend)
        self.parent_stats = conv_statistics(parent, data.calibration)

    def __call__(self, net: Structure, kept: list[Tensor]) -> float:
        tuned = recalibrate(net, kept, self.parent_stats, self.data.calibration)
        return accuracy(tuned, self.data.held_out.x, self.data.held_out.y)


SCORE = AdaptiveBN
