"""How big a network is: the one count behind the fitness's compression, the population's sizes
and every run's logged figures.

A fully connected network is described by its layer widths from input to output,
``(input, *hidden, classes)``; a convolutional one by its plan (:mod:`ecomp.nets.convnet`).
``units`` counts the prunable units (hidden neurons and conv channels: the paper's size);
``params`` the weights and biases; ``macs`` the multiply-accumulates of one image's forward
pass. :func:`counted_macs` counts them with torch's own FLOP counter instead, for the logged
figures (a test holds the two counts equal, and both to a hand count of LeNet-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ecomp.nets import convnet
from ecomp.nets.convnet import ConvNet, ConvPlan

SIZES = ("units", "params", "macs")    # fitness.compression, report.size


def size(widths: Sequence[int], kind: str) -> int:
    """The ``kind`` size of a fully connected network with layer widths ``widths`` (input to output)."""
    if kind == "units":
        return sum(widths[1:-1])
    if kind == "params":
        return sum((widths[l] + 1) * widths[l + 1] for l in range(len(widths) - 1))
    if kind == "macs":
        return sum(widths[l] * widths[l + 1] for l in range(len(widths) - 1))
    raise ValueError(f"size kind {kind!r}: one of {', '.join(SIZES)}")


def plan_size(plan: ConvPlan, kind: str) -> int:
    """The ``kind`` size of a convolutional network of ``plan``."""
    if kind == "units":
        return sum(plan.units)
    if kind == "params":
        return convnet.params(plan)
    if kind == "macs":
        return convnet.macs(plan)
    raise ValueError(f"size kind {kind!r}: one of {', '.join(SIZES)}")


def widths_of(layers) -> tuple[int, ...]:
    """``(input, *hidden, classes)`` of a network given as ``(weight, bias)`` pairs."""
    return (layers[0][0].shape[1], *(w.shape[0] for w, _ in layers))


def net_size(net, kind: str) -> int:
    """The ``kind`` size of either kind of network."""
    if isinstance(net, ConvNet):
        return plan_size(net.plan, kind)
    return size(widths_of(net), kind)


def counted_macs(net) -> int:
    """Multiply-accumulates of one image, counted by ``torch.utils.flop_counter`` on the network's
    module (a FLOP there is half a MAC for convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ecomp.nets.network import detached, model_from_layers

    net = detached(net)
    width = net.plan.in_shape[0] * net.plan.in_shape[1] * net.plan.in_shape[2] if isinstance(net, ConvNet) \
        else net[0][0].shape[1]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model_from_layers(net)(torch.zeros(1, width))
    return counter.get_total_flops() // 2
