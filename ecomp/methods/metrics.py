"""The figures every method's returned network is judged by, computed in one place.

Sizes are relative to the parent: ``compression`` counts hidden units (the paper's
measure), ``params_ratio`` counts weights and biases. Both are logged for every run, whichever
EComp's fitness used (``fitness.compression``).
"""

from __future__ import annotations

from ecomp.nets.data import Split
from ecomp.nets.network import Layers, accuracy
from ecomp.nets.sizes import size, widths_of


def network_metrics(layers: Layers, parent: Layers, val: Split, test: Split, prefix: str = "best_") -> dict[str, float]:
    """``<prefix>{test_accuracy, val_accuracy, compression, hidden_units, parameters, params_ratio}``."""
    layers = [(w.cpu(), b.cpu()) for w, b in layers]
    units, params = (size(widths_of(layers), k) for k in ("units", "params"))
    parent_units, parent_params = (size(widths_of(parent), k) for k in ("units", "params"))
    out = {
        "test_accuracy": accuracy(layers, test.x, test.y),
        "val_accuracy": accuracy(layers, val.x, val.y) if val.x.shape[0] else float("nan"),
        "compression": units / parent_units,
        "hidden_units": float(units),
        "parameters": float(params),
        "params_ratio": params / parent_params,
    }
    return {prefix + k: float(v) for k, v in out.items()}
