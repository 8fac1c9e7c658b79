"""The interface of a cheap score of a candidate network (higher is better)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ecomp.kernels.backend import Backend
from ecomp.nets.data import Split
from ecomp.nets.structure import Structure


@dataclass
class ScoreData:
    """What a score may read. ``held_out``: labelled training images outside the run's subset
    (the methods take them from the validation split, disjoint from the images that pick the
    final network); ``calibration``: ``bn_batches`` batches of the run's training subset (images
    only). Never the test split."""
    held_out: Split
    calibration: list[Tensor]
    batch_size: int


class Score(ABC):
    """Scores candidates pruned from one parent. Built once per search (it may measure the parent
    on ``data`` then), called once per candidate with its network and, per group, the parent's
    unit indices it kept."""
    name: ClassVar[str]

    def __init__(self, parent: Structure, data: ScoreData, backend: Backend):
        self.parent, self.data, self.backend = parent, data, backend

    @abstractmethod
    def __call__(self, net: Structure, kept: list[Tensor]) -> float:
        """The candidate's score: higher is better."""

    def batches(self) -> list[Tensor]:
        """The held-out images in batches of ``batch_size`` (the last one dropped when partial)."""
        x, n = self.data.held_out.x, self.data.batch_size
        return [x[s:s + n] for s in range(0, x.shape[0] - n + 1, n)]
