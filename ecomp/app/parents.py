"""The parent network and the data of a run: the parent's shape (from the dataset or the user's
checkpoint), training it once and caching it, and the data's splits."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ecomp.app.caches import Caches
from ecomp.app.provenance import repo_root
from ecomp.app.spec import DataSpec, ParentSpec
from ecomp.errors import CheckpointError, ConfigError
from ecomp.nets.data import Split
from ecomp.nets.kinds import blueprint_for
from ecomp.nets.parent import TrainSpec, cached_parent
from ecomp.nets.structure import Structure

log = logging.getLogger(__name__)


def resolve_parent(settings: Mapping[str, Any], data: DataSpec, caches: Caches) -> tuple[ParentSpec, dict[str, Any]]:
    """The parent ``parent.*`` ``settings`` describe, and the settings it fills in: for a parent the
    tool trains, ``input_dim`` and ``classes`` when null (the dataset's); for ``parent=checkpoint``
    the shape read from the file, checked against the data. Raises :class:`ConfigError` (one line)
    before anything is created."""
    from ecomp.nets.checkpoint import check_fits
    from ecomp.nets.datasets import info

    ds, p = info(data.name), settings
    cache_dir = Path(p["cache_dir"]) if p["cache_dir"] else repo_root() / ".cache" / "parents"
    recipe = dict(epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], seed=p["seed"])
    if p["path"] is None:
        blueprint = blueprint_for(p["kind"], ds.shape, ds.classes, p)
        why = blueprint.problems()
        if why:
            raise ConfigError(f"parent={p['kind']} on data={ds.name} ({'x'.join(map(str, ds.shape))} images): {why}")
        filled = {"input_dim": p["input_dim"] or ds.input_dim, "classes": p["classes"] or ds.classes}
        spec = TrainSpec(blueprint, **recipe, batchnorm=bool(p["batchnorm"]))
        return ParentSpec(spec, None, None, cache_dir), filled
    net, sha = caches.checkpoint(p["path"])
    where = f"parent.path={str(p['path'])!r}"
    check_fits(net, where, ds.input_dim if p["input_dim"] is None else p["input_dim"],
               ds.classes if p["classes"] is None else p["classes"], ds.name)
    if len(net.in_shape) > 1 and tuple(net.in_shape) != tuple(ds.shape):
        raise CheckpointError(f"{where}: the network takes {'x'.join(map(str, net.in_shape))} images but "
                              f"data={ds.name} has {'x'.join(map(str, ds.shape))} images")
    return ParentSpec(TrainSpec(net.blueprint(), **recipe), str(p["path"]), sha, cache_dir), net.settings()


def load_split(data: DataSpec, train: bool, caches: Caches | None = None) -> Split:
    """The data's whole train or test split (through ``caches``: read once per process)."""
    return (caches or Caches()).split(data.name, data.root, train, data.download)


def prepare_parent(parent: ParentSpec, data: DataSpec, caches: Caches | None = None) -> tuple[Split, Structure]:
    """The training split and the parent network: the user's checkpoint, or trained once and then
    read from the cache."""
    caches = caches or Caches()
    train = load_split(data, train=True, caches=caches)
    if parent.path is not None:
        return train, caches.checkpoint(parent.path)[0]
    t = time.perf_counter()
    net, trained = cached_parent(parent.recipe, parent.cache_dir, train)
    if trained:
        log.info("trained the parent in %.1f s", time.perf_counter() - t)
    return train, net
