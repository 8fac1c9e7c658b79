"""How big a network is: the one count behind the fitness's compression, the population's sizes
and every run's logged figures.

A network's size is its kind's (:meth:`ecomp.nets.structure.Structure.size`); a fully connected
one's is computed here from its layer widths from input to output, ``(input, *hidden, classes)``.
``units`` counts the prunable units (hidden neurons and conv channels: the paper's size);
``params`` the weights and biases; ``macs`` the multiply-accumulates of one image's forward
pass. :func:`counted_macs` counts them with torch's own FLOP counter instead: the tests hold
every kind's count equal to it (and both to a hand count of LeNet-5), and the logged figures
use the kind's count, which needs no dispatch mode (entering one imports ``torch._dynamo``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

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


def counted_macs(net) -> int:
    """Multiply-accumulates of one image, counted by ``torch.utils.flop_counter`` on the network's
    module (a FLOP there is half a MAC for convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ecomp.nets.structure import detached

    net = detached(net)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.to_module()(torch.zeros(1, net.in_features))
    return counter.get_total_flops() // 2
