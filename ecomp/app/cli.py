"""Command-line helpers for ``run.py`` and the experiment scripts: one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def fail(message: str, code: int = 2) -> NoReturn:
    from ecomp.redact import mask

    print(f"error: {mask(message)}", file=sys.stderr)
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


def check_parent_choice(choice: str | None, cfg) -> None:
    """``parent=checkpoint`` needs ``parent.path`` (the other keys may hold a trained parent's widths
    from the command line, so the config alone cannot tell): :class:`ConfigError` without it."""
    from ecomp.errors import ConfigError

    if choice == "checkpoint" and cfg.parent.path is None:
        raise ConfigError("invalid config: parent.path=None: missing: parent=checkpoint reads your network "
                          "from parent.path=<file.pt or .pt2>")


def _unknown_method_setting(key: str, overrides: list[str], conf_dir: Path, config_name: str) -> None:
    """Fail with the method's own line for ``method.<key>``, a setting its method does not read
    (its YAML has no such key): which settings it has, and where the setting lives if elsewhere."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ecomp.methods.base import method_class

    mine = [o for o in overrides if o.split("=", 1)[0].lstrip("+") == key]
    rest = [o for o in overrides if o not in mine]
    try:
        with initialize_config_dir(str(conf_dir), version_base="1.3"):
            target = compose(config_name, overrides=rest).method._target_
        cls = method_class(target)
        value = OverridesParser.create().parse_overrides(mine[-1:])[0].value() if mine else None
    except Exception:  # noqa: BLE001 - another problem: Hydra's own line says it
        return
    fail(str(cls.unknown_setting(key.split(".", 1)[1], value)))


def check_composition(argv: list[str], conf_dir: Path = CONF_DIR, config_name: str = "config") -> None:
    """Compose once before Hydra does, so a typo or a wrong type fails in one line.

    Hydra's own report of the same error spans six lines. Only plain
    overrides are checked (sweeps are composed job by job by Hydra itself).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ecomp.app.config import register_configs

    register_configs()
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    if "-m" in argv or "--multirun" in argv or any(a.startswith("-") and a not in ("-m",) for a in argv):
        return
    try:
        with initialize_config_dir(str(conf_dir), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        text = str(exc)
        cause = exc.__cause__
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if cause is not None:
            lines += [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
        if key and key.startswith("method.") and any("not in struct" in ln for ln in lines):
            _unknown_method_setting(key, overrides, conf_dir, config_name)
        reason = next((ln for ln in lines if not ln.startswith(("full_key", "reference_type", "object_type",
                                                                "To append", "Could not override",
                                                                "Error merging"))), lines[0] if lines else text)
        fail(f"invalid config: {key + ': ' if key else ''}{reason}")
