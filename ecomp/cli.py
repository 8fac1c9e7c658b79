"""Command-line helpers for ``run.py`` and the experiment scripts: one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def check_overrides(argv: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """Reject an unknown config-group option (``fitness=999``) with one line, before Hydra starts.

    Hydra's own message spans several lines; this names the key, the value and
    the options. Sweeps (``fitness=001,120``) are checked choice by choice;
    ``glob(...)`` is expanded to the matching options; other functions are left to Hydra.

    Returns ``argv`` with numeric group choices quoted: Hydra parses
    ``fitness=121`` as the integer 121 and refuses it as a group option, so it
    becomes ``fitness='121'`` (and ``fitness=120,121`` -> ``fitness='120','121'``).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = list(argv)
    for pos, arg in enumerate(argv):
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            ov = parser.parse_overrides([arg])[0]
        except HydraException:
            continue  # Hydra reports syntax errors itself
        key = ov.key_or_group
        group = conf_dir / key
        if ov.package is not None or not group.is_dir() or ov.is_delete() or key.startswith("hydra/"):
            continue  # hydra/* groups (launchers, sweepers) live in plugins: Hydra checks them
        options = sorted(p.stem for p in group.glob("*.yaml"))
        value = ov.value()
        if isinstance(value, Glob):
            # Expanded here: Hydra would hand each job `fitness=121` unquoted, an int again.
            values = value.filter(options)
            if not values:
                fail(f"invalid config: {key}={arg.split('=', 1)[1]!r} matches none of {', '.join(options)}")
        elif ov.is_sweep_override():
            try:
                values = [str(v) for v in ov.sweep_string_iterator()]
            except Exception:  # noqa: BLE001 - range() and other functions
                continue
        else:
            values = [ov.get_value_element_as_str()]
        for v in values:
            if v not in options:
                fail(f"invalid config: {key}={v!r}: one of {', '.join(options)}")
        if not ov.is_sweep_override() or ov.is_discrete_sweep() or isinstance(value, Glob):
            out[pos] = f"{arg.split('=', 1)[0]}=" + ",".join(f"'{v}'" for v in values)
    return out
