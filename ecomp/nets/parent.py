"""Train the parent network once and cache it, keyed by everything that shapes it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from ecomp.nets.data import Split
from ecomp.nets.network import Architecture, Layers, build_mlp, layers_of, load_network, save_network
from ecomp.nets.training import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    arch: Architecture
    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 100
    seed: int = 0

    def key(self) -> str:
        """A short hash of the spec: the cache file name."""
        d = asdict(self)
        d["arch"]["hidden"] = list(self.arch.hidden)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def train(spec: TrainSpec, data: Split) -> Layers:
    """Adam + cross-entropy over the full training split (CPU, deterministic for a seed)."""
    g = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)  # nn.Linear's initialisation uses the global generator
    model = fit(build_mlp(spec.arch), data.x, data.y, spec.epochs, spec.lr, spec.batch_size, g)
    return [(w.clone(), b.clone()) for w, b in layers_of(model)]


def cached_parent(spec: TrainSpec, cache_dir: Path, train_data: Split) -> tuple[Layers, bool]:
    """The parent for ``spec``: loaded from ``cache_dir`` or trained and saved there.

    Returns ``(layers, trained_now)``. A cache file that cannot be read or does
    not match the architecture is retrained and replaced, never used.
    """
    path = Path(cache_dir) / f"parent-{spec.key()}.pt"
    if path.exists():
        try:
            return load_network(path, expected=spec.arch), False
        except ValueError as exc:
            log.warning("retraining the parent: %s", exc)
    layers = train(spec, train_data)
    save_network(layers, path, extra={"train_spec": json.loads(json.dumps(asdict(spec), default=list))})
    return layers, True
