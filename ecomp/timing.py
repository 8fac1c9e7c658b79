"""Per-phase wall-clock accounting for the evolution loop (used by the benchmarks)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager


class PhaseTimer:
    """Accumulates seconds per named phase. ``synchronize``: waits for queued device work, called
    at each phase boundary so a GPU's time lands in its phase (the backend's ``synchronize``)."""

    def __init__(self, synchronize: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.synchronize = synchronize or (lambda: None)

    @contextmanager
    def phase(self, name: str):
        self.synchronize()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.synchronize()
            self.seconds[name] += time.perf_counter() - t


class NullTimer(PhaseTimer):
    """A timer that measures nothing (the default outside benchmarks)."""

    def __init__(self) -> None:
        super().__init__()

    @contextmanager
    def phase(self, name: str):
        yield
