"""Loading a swappable part from the class a config's ``_target_`` names (methods, similarity measures)."""

from __future__ import annotations

import importlib
import inspect


def plugin_class(target: str, base: type) -> type:
    """The concrete subclass of ``base`` (with a ``name`` and ``settings``) that ``target`` names;
    ``ValueError`` with one line otherwise. Plain importlib: no Hydra in the algorithm."""
    module_name, _, attr = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot import {target!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, base)) or inspect.isabstract(cls) \
            or not isinstance(getattr(cls, "name", None), str) or not isinstance(getattr(cls, "settings", None), tuple):
        raise ValueError(f"{target!r} is not a concrete {base.__module__}.{base.__name__} (with a name and settings)")
    return cls
