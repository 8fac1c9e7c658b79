"""The search space: Hydra's sweep syntax (``interval``, ``tag(log, ...)``, ``choice``, ``range``) as
Optuna distributions, and suggested values written back as overrides Hydra reads unchanged.

The leading underscore keeps Hydra's plugin scanner out: it re-executes every other module under
``hydra_plugins`` when it starts, which makes new classes of everything they define (an exception
raised by one copy would not be caught as the other)."""

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep


class SearchError(ValueError):
    """The search cannot start; the message is one line."""


@dataclass(frozen=True)
class Dim:
    """One searched key: a float or int range (``log`` scale or not), or a set of choices."""
    key: str
    kind: str                       # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: tuple = field(default_factory=tuple)

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def spec(self) -> str:
        if self.kind == "categorical":
            return "choice(" + ", ".join(map(str, self.choices)) + ")"
        return f"{self.kind}{'-log' if self.log else ''}({self.low:g}, {self.high:g})"


def dim_of(key: str, sweep: Any) -> Dim:
    """A Hydra sweep value (``interval(0, 10)``, ``tag(log, interval(0.05, 2))``, ``choice(0, 2, 4)``,
    ``range(0, 6, 2)``) as a search dimension; :class:`SearchError` for an unusable one."""
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            raise SearchError(f"search space: {key}: interval needs finite bounds")
        if low > high:
            raise SearchError(f"search space: {key}=interval({low:g}, {high:g}): low > high")
        log_scale = "log" in sweep.tags
        if log_scale and low <= 0:
            raise SearchError(f"search space: {key}: a log-scale interval needs low > 0, not {low:g}")
        kind = "int" if "int" in sweep.tags else "float"
        return Dim(key, kind, float(low), float(high), log_scale)
    if isinstance(sweep, (ChoiceSweep, RangeSweep)):
        values = list(sweep.list) if isinstance(sweep, ChoiceSweep) else list(sweep.range())
        if not values:
            raise SearchError(f"search space: {key}: no values to choose from")
        if any(not isinstance(v, (bool, int, float, str)) for v in values):
            raise SearchError(f"search space: {key}: choices must be numbers or strings")
        return Dim(key, "categorical", choices=tuple(values))
    raise SearchError(f"search space: {key}: use interval(low, high), choice(...) or range(...), "
                      f"not {type(sweep).__name__}")


def override_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))
