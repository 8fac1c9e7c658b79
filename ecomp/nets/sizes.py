"""How big a network is: the one count behind the fitness's compression, the population's sizes
and every run's logged figures.

A feed-forward network is described by its layer widths from input to output,
``(input, *hidden, classes)``. ``units`` counts its hidden units (the paper's size);
``params`` its weights and biases.
"""

from __future__ import annotations

from collections.abc import Sequence

from ecomp.nets.network import Layers

SIZES = ("units", "params")            # fitness.compression


def size(widths: Sequence[int], kind: str) -> int:
    """The ``kind`` size of a network with layer widths ``widths`` (input to output)."""
    if kind == "units":
        return sum(widths[1:-1])
    if kind == "params":
        return sum((widths[l] + 1) * widths[l + 1] for l in range(len(widths) - 1))
    raise ValueError(f"size kind {kind!r}: one of {', '.join(SIZES)}")


def widths_of(layers: Layers) -> tuple[int, ...]:
    """``(input, *hidden, classes)`` of a network given as ``(weight, bias)`` pairs."""
    return (layers[0][0].shape[1], *(w.shape[0] for w, _ in layers))
