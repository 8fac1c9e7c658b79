"""The parent network and the data of a run, from its specification: the data's splits, and the
parent read from the user's checkpoint or trained once and cached."""

from __future__ import annotations

import logging
import time

from ecomp.app.caches import Caches
from ecomp.app.spec import DataSpec, ParentSpec
from ecomp.nets.data import Split
from ecomp.nets.parent import cached_parent
from ecomp.nets.structure import Structure

log = logging.getLogger(__name__)


def load_split(data: DataSpec, train: bool, caches: Caches | None = None) -> Split:
    """The data's whole train or test split (through ``caches``: read once per process)."""
    return (caches or Caches()).split(data.name, data.root, train, data.download, data.user)


def prepare_parent(parent: ParentSpec, data: DataSpec, caches: Caches | None = None) -> tuple[Split, Structure]:
    """The training split and the parent network: the user's checkpoint or module, or trained once
    and then read from the cache."""
    caches = caches or Caches()
    train = load_split(data, train=True, caches=caches)
    if parent.model is not None:
        return train, caches.model(parent.model)[0]
    if parent.path is not None:
        return train, caches.checkpoint(parent.path)[0]
    t = time.perf_counter()
    net, trained = cached_parent(parent.recipe, parent.cache_dir, train)
    if trained:
        log.info("trained the parent in %.1f s", time.perf_counter() - t)
    return train, net
