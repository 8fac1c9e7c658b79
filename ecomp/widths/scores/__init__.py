"""Cheap scores of a pruned candidate, one module each (``method.score=<module>``).

A score is a module of this package that defines ``SCORE``, a subclass of
:class:`ecomp.widths.scores.base.Score`; nothing else lists them. Higher is better.
"""

from __future__ import annotations

import importlib
import pkgutil

from ecomp.widths.scores.base import Score, ScoreData

__all__ = ["Score", "ScoreData", "available", "score_class"]


def available() -> list[str]:
    """The names ``method.score`` accepts: this package's modules but ``base``."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")


def score_class(name: str) -> type[Score]:
    """The score class module ``name`` defines; ``ValueError`` for a name not in :func:`available`."""
    if name not in available():
        raise ValueError(f"unknown score {name!r}: one of {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}").SCORE
