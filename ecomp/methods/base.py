"""The interface between the pipeline and a compression method.

A method receives a :class:`Problem` (the trained parent, the run's data, a seeded
generator) and returns an :class:`Outcome` (the compressed network). It never sees
the test split and never measures its own result: ``ecomp.methods.metrics`` does that for
every method alike, so their figures are comparable by construction.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ecomp.nets.data import RunData
from ecomp.core.evolution import GenerationRecord
from ecomp.kernels.backend import Backend, resolve
from ecomp.nets.structure import Structure
from ecomp.nets.parent import TrainSpec
from ecomp.plugins import plugin_class
from ecomp.timing import NullTimer, PhaseTimer

# Config groups only EComp reads: left out of a baseline's params and config hash.
EVOLUTION_GROUPS = ("population", "operators", "similarity", "fitness", "evolution")


def _ignore(*_: Any) -> None:
    return None


@dataclass
class Problem:
    parent: Structure                         # the trained network to compress, on ``device``
    recipe: TrainSpec                   # how the parent was trained (architecture, epochs, lr, batch)
    data: RunData                       # the run's training subset, validation split, all training images
    batch_size: int                     # data.batch_size: EComp's generation batch, fine-tuning's batch
    generator: torch.Generator          # seeded with the run's seed (it already drew ``data``)
    seed: int
    backend: Backend = field(default_factory=resolve)   # how the run computes (its device and kernels)
    timer: PhaseTimer = field(default_factory=NullTimer)
    on_generation: Callable[[GenerationRecord], None] = _ignore   # tracking and progress
    on_step: Callable[[], None] = _ignore                        # progress of other long steps

    @property
    def device(self) -> torch.device:
        return self.backend.device


@dataclass
class Outcome:
    network: Structure                                             # the returned network
    metrics: dict[str, float] = field(default_factory=dict)  # the method's own figures, logged as they are
    stages: dict[str, Structure] = field(default_factory=dict)  # earlier networks measured too, e.g. "evolved"


class Method(ABC):
    """A compression method. Subclasses set ``name`` and ``settings`` and implement the rest."""

    name: ClassVar[str]
    settings: ClassVar[tuple[str, ...]]          # the ``method.*`` keys it reads
    optional: ClassVar[tuple[str, ...]] = ()     # those of them that may be null
    groups_unused: ClassVar[tuple[str, ...]] = EVOLUTION_GROUPS

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Any, scenario: str | None = None) -> "Method":
        """Build from the composed config (attribute access only: no Hydra here)."""

    def setting_values(self) -> dict[str, Any]:
        """The settings that shape this method's result (its part of the run's config hash)."""
        return {k: getattr(self, k) for k in self.settings}

    def labels(self) -> dict[str, str]:
        """Tags that tell this run from its siblings in a sweep: ``keep`` and every setting that
        differs from the class's default, e.g. ``{"keep": "0.5", "epochs": "3"}``."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) else {}
        return {k: _label(v) for k, v in self.setting_values().items()
                if k == "keep" or defaults.get(k, dataclasses.MISSING) != v}

    def tags(self) -> dict[str, str]:
        """Tags of the run beyond its labels (e.g. which similarity measure EComp used)."""
        return {}

    def variant(self) -> str:
        """What one line of the frontier stands for: the name and its non-default settings but ``keep``."""
        extra = [f"{k}={v}" for k, v in self.labels().items() if k != "keep"]
        return self.name + (f" ({', '.join(extra)})" if extra else "")

    def run_name(self, seed: int) -> str:
        return "-".join([self.name, *(f"{k}{v}" for k, v in self.labels().items()), f"seed{seed}"])

    def progress_total(self, problem: Problem) -> int | None:
        """Steps reported through ``on_generation``/``on_step`` (for a progress bar); None: no bar."""
        return None

    @abstractmethod
    def run(self, problem: Problem) -> Outcome:
        ...


def method_class(target: str) -> type[Method]:
    """The class a ``method._target_`` names; ``ValueError`` (one line) if it is not a concrete Method."""
    return plugin_class(target, Method)


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
