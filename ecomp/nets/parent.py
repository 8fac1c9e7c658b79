"""Train the parent network once and cache it, keyed by everything that shapes it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ecomp.nets.data import Split
from ecomp.nets.network import load_network, save_network
from ecomp.nets.structure import Blueprint, Structure
from ecomp.nets.training import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    arch: Blueprint                      # an MLP's Architecture, a CNN's ConvPlan, ...
    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 100
    seed: int = 0
    batchnorm: bool = False              # a CNN trained with BatchNorm after each conv (folded afterwards)
    data: str = "fashion_mnist"          # what it is trained on: a dataset's name, or the user's data's identity

    def key(self) -> str:
        """A short hash of the spec, the data it is trained on included: the cache file name."""
        recipe = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "arch"}
        d = self.arch.cache_key(recipe)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def train(spec: TrainSpec, data: Split) -> Structure:
    """Adam + cross-entropy over the full training split (CPU, deterministic for a seed). A CNN
    trained with BatchNorm comes back with it folded into its convolutions."""
    g = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)  # nn.Linear's initialisation uses the global generator
    model = fit(spec.arch.build(spec.batchnorm), data.x, data.y, spec.epochs, spec.lr, spec.batch_size, g)
    return spec.arch.network(model)


def cached_parent(spec: TrainSpec, cache_dir: Path, train_data: Split) -> tuple[Structure, bool]:
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
