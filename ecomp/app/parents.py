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
from ecomp.errors import CheckpointError, ConfigError
from ecomp.nets.convnet import ConvNet, ConvPlan, lenet5
from ecomp.nets.data import Split
from ecomp.nets.mlp import Architecture
from ecomp.nets.structure import Structure
from ecomp.nets.parent import TrainSpec, cached_parent

log = logging.getLogger(__name__)


def data_root(cfg: DictConfig) -> Path:
    return Path(cfg.data.root) if cfg.data.root else repo_root() / "data"


def train_spec(cfg: DictConfig, parent: Structure | None = None) -> TrainSpec:
    """How the parent is (or, for a checkpoint, would be) trained: ``method=scratch``'s recipe.
    A checkpoint's architecture is ``parent``'s."""
    p = cfg.parent
    recipe = (p.epochs, p.lr, p.batch_size, p.seed)
    if isinstance(parent, ConvNet):
        return TrainSpec(parent.plan, *recipe)
    if p.kind == "cnn":
        return TrainSpec(cnn_plan(cfg), *recipe, batchnorm=bool(p.batchnorm))
    return TrainSpec(Architecture(p.input_dim, tuple(p.hidden), p.classes), *recipe)


def cnn_plan(cfg: DictConfig) -> ConvPlan:
    """``parent=cnn``'s plan on the data's images: LeNet-5's shape with the config's sizes."""
    from ecomp.nets.datasets import info

    p, ds = cfg.parent, info(cfg.data.name)
    return lenet5(ds.shape, p.classes or ds.classes, tuple(p.channels), p.kernel, tuple(p.padding or ()), p.pool,
                  tuple(p.hidden))


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
        if p.kind == "cnn":
            why = cnn_plan(cfg).problems()
            if why:
                raise ConfigError(f"parent=cnn with channels={list(p.channels)}, kernel={p.kernel}, padding="
                                  f"{list(p.padding or [])}, pool={p.pool} on data={ds.name} ({'x'.join(map(str, ds.shape))} "
                                  f"images): {why}; use a smaller parent.kernel or parent.pool, or more parent.padding")
        return None
    net, sha = caches.checkpoint(p.path)
    where = f"parent.path={str(p.path)!r}"
    check_fits(net, where, ds.input_dim if p.input_dim is None else p.input_dim,
               ds.classes if p.classes is None else p.classes, ds.name)
    if isinstance(net, ConvNet):
        if net.plan.in_shape != ds.shape:
            raise CheckpointError(f"{where}: the network takes {'x'.join(map(str, net.plan.in_shape))} images but "
                                  f"data={ds.name} has {'x'.join(map(str, ds.shape))} images")
        stages = net.plan.stages
        p.kind, p.channels = "cnn", [s.out for s in stages if s.kind == "conv"]
        p.hidden = [s.out for s in stages[:-1] if s.kind == "linear"]
        p.input_dim, p.classes = ds.input_dim, net.plan.classes
    else:
        p.input_dim, p.classes = net.in_features, net.classes
        p.hidden = list(net.units)
    validate(cfg)                                  # settings that depend on the depth (similarity.layers)
    return sha


def setup(cfg: DictConfig, caches: Caches | None = None) -> str | None:
    """Check the config and fill in the parent's shape: :func:`validate`, then :func:`resolve_parent`."""
    validate(cfg)
    return resolve_parent(cfg, caches or Caches())


def load_split(cfg: DictConfig, train: bool, caches: Caches | None = None) -> Split:
    """The data's whole train or test split (through ``caches``: read once per process)."""
    return (caches or Caches()).split(cfg.data.name, data_root(cfg), train, cfg.data.download)


def prepare_parent(cfg: DictConfig, caches: Caches | None = None) -> tuple[Split, Structure]:
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
