"""The parent network and the data of a run, from the composed config: paths, the parent's
shape (from the dataset or the user's checkpoint), training it once and caching it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from ecomp.app.caches import Caches
from ecomp.app.config import validate
from ecomp.app.provenance import repo_root
from ecomp.nets.data import Split
from ecomp.nets.network import Architecture, Layers
from ecomp.nets.parent import TrainSpec, cached_parent

log = logging.getLogger(__name__)


def data_root(cfg: DictConfig) -> Path:
    return Path(cfg.data.root) if cfg.data.root else repo_root() / "data"


def train_spec(cfg: DictConfig) -> TrainSpec:
    p = cfg.parent
    return TrainSpec(Architecture(p.input_dim, tuple(p.hidden), p.classes), p.epochs, p.lr, p.batch_size, p.seed)


def parent_cache_dir(cfg: DictConfig) -> Path:
    """Where trained parents are kept: ``parent.cache_dir``, else ``<repo>/.cache/parents``."""
    return Path(cfg.parent.cache_dir) if cfg.parent.cache_dir else repo_root() / ".cache" / "parents"


_CHECKPOINTS: dict[tuple, tuple[list, str]] = {}


def resolve_parent(cfg: DictConfig, caches: Caches) -> str | None:
    """Fill in what the config leaves to the data and the file: ``parent.input_dim`` and
    ``parent.classes`` when null (the dataset's), and for ``parent=checkpoint`` the architecture
    read from the weights, checked against the data. Returns the checkpoint's sha256 (None for
    a parent the tool trains). Raises :class:`ConfigError` (one line) before anything is created."""
    from ecomp.nets.checkpoint import check_fits
    from ecomp.nets.datasets import info

    ds, p = info(cfg.data.name), cfg.parent
    if p.path is None:
        if p.input_dim is None:
            p.input_dim = ds.input_dim
        if p.classes is None:
            p.classes = ds.classes
        return None
    layers, sha = caches.checkpoint(p.path)
    where = f"parent.path={str(p.path)!r}"
    check_fits(layers, where, ds.input_dim if p.input_dim is None else p.input_dim,
               ds.classes if p.classes is None else p.classes, ds.name)
    p.input_dim, p.classes = layers[0][0].shape[1], layers[-1][0].shape[0]
    p.hidden = [w.shape[0] for w, _ in layers[:-1]]
    validate(cfg)                                  # settings that depend on the depth (similarity.layers)
    return sha


def setup(cfg: DictConfig, caches: Caches | None = None) -> str | None:
    """Check the config and fill in the parent's shape: :func:`validate`, then :func:`resolve_parent`."""
    validate(cfg)
    return resolve_parent(cfg, caches or Caches())


def load_split(cfg: DictConfig, train: bool, caches: Caches | None = None) -> Split:
    """The data's whole train or test split (through ``caches``: read once per process)."""
    return (caches or Caches()).split(cfg.data.name, data_root(cfg), train, cfg.data.download)


def prepare_parent(cfg: DictConfig, caches: Caches | None = None) -> tuple[Split, Layers]:
    """Data and parent network (the user's checkpoint, or trained once and then read from the
    cache); the config must have been through :func:`setup`."""
    caches = caches or Caches()
    if cfg.parent.input_dim is None or cfg.parent.hidden is None:
        resolve_parent(cfg, caches)
    train = load_split(cfg, train=True, caches=caches)
    if cfg.parent.path is not None:
        return train, caches.checkpoint(cfg.parent.path)[0]
    t = time.perf_counter()
    layers, trained = cached_parent(train_spec(cfg), parent_cache_dir(cfg), train)
    if trained:
        log.info("trained the parent in %.1f s", time.perf_counter() - t)
    return train, layers
