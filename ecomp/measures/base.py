"""The interface between the evaluator and a similarity measure."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from ecomp.kernels.backend import Backend
from ecomp.plugins import plugin_class


class SimilarityMeasure(ABC):
    """Scores how far a child's hidden representations are from the parent's (0 = the same).

    Shapes: ``n`` images per batch, ``G`` batches at a time, ``L`` compared hidden layers.
    """

    name: ClassVar[str]
    settings: ClassVar[tuple[str, ...]]          # the ``similarity.*`` keys it reads (besides layers)
    backend: Backend                             # how it computes (ecomp.kernels.backend)

    @property
    def kernels(self) -> str:
        """What it computes on: ``native`` or ``torch`` (the run's ``kernels`` tag)."""
        return self.backend.kernels

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Mapping[str, Any], backend: Backend) -> "SimilarityMeasure":
        """Build from the ``similarity`` group's values (``settings["perplexity"]``, ...)."""

    @abstractmethod
    def prepare(self, parent: list[Tensor], n: int) -> list[Any]:
        """The parent's side of ``G`` consecutive batches, from its activations ``parent[l]``
        ``(G * n, h_l)`` on each compared layer: one state per batch."""

    @abstractmethod
    def score(self, hidden: list[list[Tensor]], stacked: list[Tensor] | None, states: list[Any],
              n: int) -> Tensor:
        """``(G, pop)`` dissimilarity, summed over the compared layers, of every network.

        ``hidden[l][i]``: network ``i``'s activations ``(G * n, h)`` on compared layer ``l``;
        ``stacked[l]``: the same as one ``(pop, h, G * n)`` tensor (transposed) when the
        population has one architecture, or zero-padded to the widest network when the backend
        pads (:mod:`ecomp.kernels.padded`: a measure must give zero features no weight, as Grams do), else
        None; ``states``: :meth:`prepare`'s, one per batch.
        """

    def reference_prepare(self, parent: list[Tensor]) -> Any:
        """The parent's side of one batch for :meth:`reference` (``parent[l]``: ``(n, h_l)``)."""
        return [a.double() for a in parent]

    @abstractmethod
    def reference(self, state: Any, child: list[Tensor]) -> float:
        """The straightforward float64 formula for one network on one batch (the tests' oracle),
        against :meth:`reference_prepare`'s ``state``."""


def measure_class(target: str) -> type[SimilarityMeasure]:
    """The class a ``similarity._target_`` names; ``ValueError`` (one line) if it is not a concrete SimilarityMeasure."""
    return plugin_class(target, SimilarityMeasure)
