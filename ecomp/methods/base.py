"""The interface between the pipeline and a compression method.

A method receives a :class:`Problem` (the trained parent, the run's data, a seeded
generator) and returns an :class:`Outcome` (the compressed network). It never sees
the test split and never measures its own result: ``ecomp.measure`` does that for
every method alike, so their figures are comparable by construction.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..data import RunData
from ..evolution import GenerationRecord
from ..network import Layers
from ..parent import TrainSpec
from ..timing import NullTimer, PhaseTimer

# Settings a method may have under ``method.``; each method lists the ones it reads.
SETTINGS = ("keep", "importance", "epochs", "lr", "temperature", "alpha", "finetune_epochs")
# Config groups only EComp reads: left out of a baseline's params and config hash.
EVOLUTION_GROUPS = ("population", "operators", "similarity", "fitness", "evolution")


def _ignore(*_: Any) -> None:
    return None


@dataclass
class Problem:
    parent: Layers                      # the trained network to compress, on ``device``
    recipe: TrainSpec                   # how the parent was trained (architecture, epochs, lr, batch)
    data: RunData                       # the run's training subset, validation split, all training images
    batch_size: int                     # data.batch_size: EComp's generation batch, fine-tuning's batch
    generator: torch.Generator          # seeded with the run's seed (it already drew ``data``)
    seed: int
    device: torch.device = torch.device("cpu")
    timer: PhaseTimer = field(default_factory=NullTimer)
    on_generation: Callable[[GenerationRecord], None] = _ignore   # tracking and progress
    on_step: Callable[[], None] = _ignore                        # progress of other long steps


@dataclass
class Outcome:
    network: Layers                                          # the returned network
    metrics: dict[str, float] = field(default_factory=dict)  # the method's own figures, logged as they are
    stages: dict[str, Layers] = field(default_factory=dict)  # earlier networks measured too, e.g. "evolved"


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

    @abstractmethod
    def labels(self) -> dict[str, str]:
        """Tags that tell this run from its siblings in a sweep, e.g. ``{"keep": "0.5"}``."""

    def run_name(self, seed: int) -> str:
        return "-".join([self.name, *(f"{k}{v}" for k, v in self.labels().items()), f"seed{seed}"])

    def progress_total(self, problem: Problem) -> int | None:
        """Steps reported through ``on_generation``/``on_step`` (for a progress bar); None: no bar."""
        return None

    @abstractmethod
    def run(self, problem: Problem) -> Outcome:
        ...


def method_class(target: str) -> type[Method]:
    """The class a ``method._target_`` names; ``ValueError`` (one line) if it is not a Method."""
    module_name, _, attr = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot import {target!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"{target!r} is not a subclass of ecomp.methods.Method")
    return cls


def keep_label(keep: float) -> str:
    return f"{keep:g}"
