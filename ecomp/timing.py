"""Per-phase wall-clock accounting for the evolution loop (used by the benchmark)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Accumulates seconds per named phase; synchronises CUDA so GPU time lands in its phase."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = torch.device(device).type == "cuda"

    @contextmanager
    def phase(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - t


class NullTimer(PhaseTimer):
    """A timer that measures nothing (the default outside benchmarks)."""

    def __init__(self) -> None:
        super().__init__("cpu")

    @contextmanager
    def phase(self, name: str):
        yield
