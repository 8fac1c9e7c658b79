"""Train the parent network once and cache it, keyed by everything that shapes it."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from ecomp.nets import convnet
from ecomp.nets.convnet import ConvPlan
from ecomp.nets.data import Split
from ecomp.nets.network import Architecture, Net, build_mlp, layers_of, load_network, save_network
from ecomp.nets.training import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    arch: Architecture | ConvPlan        # an MLP's widths, or a CNN's plan (:mod:`ecomp.nets.convnet`)
    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 100
    seed: int = 0
    batchnorm: bool = False              # a CNN trained with BatchNorm after each conv (folded afterwards)

    def key(self) -> str:
        """A short hash of the spec: the cache file name (an MLP's is what it has always been)."""
        d = asdict(self)
        if isinstance(self.arch, Architecture):
            d["arch"]["hidden"] = list(self.arch.hidden)
            del d["batchnorm"]
        else:
            d["arch"] = {"cnn": self.arch.to_dict()}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def train(spec: TrainSpec, data: Split) -> Net:
    """Adam + cross-entropy over the full training split (CPU, deterministic for a seed). A CNN
    trained with BatchNorm comes back with it folded into its convolutions."""
    g = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)  # nn.Linear's initialisation uses the global generator
    if isinstance(spec.arch, ConvPlan):
        model = fit(convnet.build_module(spec.arch, spec.batchnorm), data.x, data.y, spec.epochs, spec.lr,
                    spec.batch_size, g)
        return convnet.from_module(model, spec.arch)
    model = fit(build_mlp(spec.arch), data.x, data.y, spec.epochs, spec.lr, spec.batch_size, g)
    return [(w.clone(), b.clone()) for w, b in layers_of(model)]


def cached_parent(spec: TrainSpec, cache_dir: Path, train_data: Split) -> tuple[Net, bool]:
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
