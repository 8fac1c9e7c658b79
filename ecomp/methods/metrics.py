"""The figures every method's returned network is judged by, computed in one place.

Sizes are relative to the parent: ``compression`` counts hidden units (the paper's
measure), ``params_ratio`` counts weights and biases. Both are logged for every run, whichever
EComp's fitness used (``fitness.compression``).
"""

from __future__ import annotations

from ecomp.nets.data import Split
from ecomp.nets.network import Layers, accuracy


def hidden_units(layers: Layers) -> int:
    return sum(w.shape[0] for w, _ in layers[:-1])


def parameters(layers: Layers) -> int:
    return sum(w.numel() + b.numel() for w, b in layers)


def network_metrics(layers: Layers, parent: Layers, val: Split, test: Split, prefix: str = "best_") -> dict[str, float]:
    """``<prefix>{test_accuracy, val_accuracy, compression, hidden_units, parameters, params_ratio}``."""
    layers = [(w.cpu(), b.cpu()) for w, b in layers]
    out = {
        "test_accuracy": accuracy(layers, test.x, test.y),
        "val_accuracy": accuracy(layers, val.x, val.y) if val.x.shape[0] else float("nan"),
        "compression": hidden_units(layers) / hidden_units(parent),
        "hidden_units": float(hidden_units(layers)),
        "parameters": float(parameters(layers)),
        "params_ratio": parameters(layers) / parameters(parent),
    }
    return {prefix + k: float(v) for k, v in out.items()}
