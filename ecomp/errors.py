"""The errors a user can cause, each a one-line message naming the key, file or store and what is allowed.

The entry points (``run.py``, the sweep's set-up callback, ``python -m ecomp.app.prepare``) catch
:class:`EcompError` once and print its line; below them nothing prints or exits.
"""

from __future__ import annotations

from ecomp.redact import mask


class EcompError(Exception):
    """A problem the user can fix; the message is one line."""


class ConfigError(EcompError, ValueError):
    """A configuration value is out of range."""


def invalid(key: str, value, allowed: str) -> ConfigError:
    """The one-line error for ``key=value``: what is allowed instead."""
    return ConfigError(f"invalid config: {key}={value!r}: {allowed}")


def finite(x) -> bool:
    """A finite int or float (not a bool, not a string)."""
    import math

    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class CheckpointError(ConfigError):
    """The checkpoint given as ``parent.path`` cannot be used as a parent; the message names the file."""


class DataError(EcompError, RuntimeError):
    """The dataset cannot be found or read."""


class TrackingError(EcompError, RuntimeError):
    """The tracking store cannot be used (any password in the message is masked)."""

    def __init__(self, message: str):
        super().__init__(mask(message))
