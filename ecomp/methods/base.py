"""The interface between the pipeline and a compression method.

A method receives a :class:`Problem` (the trained parent, the run's data, a seeded
generator) and returns an :class:`Outcome` (the compressed network). It never sees
the test split and never measures its own result: ``ecomp.methods.metrics`` does that for
every method alike, so their figures are comparable by construction.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ecomp.nets.data import RunData
from ecomp.core.evolution import GenerationRecord
from ecomp.kernels.backend import Backend, resolve
from ecomp.nets.structure import Structure
from ecomp.nets.parent import TrainSpec
from ecomp.errors import ConfigError, invalid
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
    artifacts: dict[str, str] = field(default_factory=dict)    # file name -> text, logged with the run (a table)


class Method(ABC):
    """A compression method: a dataclass whose fields are its settings. Subclasses set ``name`` and
    ``settings`` (the ``method.*`` keys it reads, its YAML's keys), check their ranges in
    :meth:`check` and implement :meth:`run`; nothing else in the tool lists a method's keys."""

    name: ClassVar[str]
    settings: ClassVar[tuple[str, ...]]          # the ``method.*`` keys it reads
    optional: ClassVar[tuple[str, ...]] = ()     # those of them that may be null
    hints: ClassVar[dict[str, str]] = {}         # a key it does not read -> where that setting lives
    groups_unused: ClassVar[tuple[str, ...]] = EVOLUTION_GROUPS

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], context: Mapping[str, Any],
                      scenario: str | None = None) -> "Method":
        """The method with its ``method.*`` values ``settings``; ``context``: the run's other config
        groups as plain values (what a method reads beyond its own keys, e.g. EComp's fitness).
        :class:`ConfigError` (one line) for a key it does not read, a null it needs, a value out of range."""
        for key, value in settings.items():
            if key not in cls.settings:
                raise cls.unknown_setting(key, value)
        for key in cls.settings:
            if settings.get(key) is None and key not in cls.optional:
                raise invalid(f"method.{key}", None, f"method={cls.name} needs a value")
        method = cls.build(_typed(cls, settings), context, scenario)
        method.check()
        return method

    @classmethod
    def unknown_setting(cls, key: str, value: Any) -> ConfigError:
        """The one-line error for ``method.<key>``, a key this method does not read."""
        hint = f"; {cls.hints[key]}" if key in cls.hints else ""
        return invalid(f"method.{key}", value, f"not a setting of method={cls.name} "
                                               f"(its settings: {', '.join(cls.settings) or 'none'}){hint}")

    @classmethod
    def build(cls, settings: dict[str, Any], context: Mapping[str, Any], scenario: str | None) -> "Method":
        """The method from checked-for-presence settings (a dataclass: its fields are its settings)."""
        return cls(**settings)

    def check(self) -> None:
        """Raise :class:`ConfigError` (:func:`ecomp.errors.invalid`) for a setting out of range."""

    def progress(self, record: GenerationRecord) -> dict[str, str]:
        """What a progress bar shows of one of the method's records (none by default)."""
        return {}

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


def _typed(cls: type, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with an integer given for a float field made a float (``method.keep=1`` is 1.0),
    as a typed config would; every other value as it is (the method's ``check`` judges it)."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    return {k: float(v) if "float" in kinds.get(k, "") and isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in settings.items()}


def method_class(target: str) -> type[Method]:
    """The class a ``method._target_`` names; ``ValueError`` (one line) if it is not a concrete Method."""
    return plugin_class(target, Method)


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
