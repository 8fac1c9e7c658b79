"""``score=accuracy``: the pruned network's accuracy on the held-out images, as it is."""

from __future__ import annotations

from torch import Tensor

from ecomp.nets.structure import Structure, accuracy
from ecomp.widths.scores.base import Score


class Accuracy(Score):
    name = "accuracy"

    def __call__(self, net: Structure, kept: list[Tensor]) -> float:
        return accuracy(net, self.data.held_out.x, self.data.held_out.y)


SCORE = Accuracy
