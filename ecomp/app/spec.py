"""The run specification: the composed config, read once, as frozen typed parts.

An entry point (``run.py``, the sweep's set-up, the Optuna sweeper, a benchmark) composes the
config with Hydra and calls :func:`build` once; everything below receives the :class:`RunSpec`
(or one of its parts) and never the config. :func:`build` checks the config, reads what the
config leaves to the data and to a checkpoint (the parent's shape), builds the method from its
own settings and chooses the backend, all before anything is created; the composed config is
never edited.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from ecomp.app.caches import Caches
from ecomp.app.config import config_hash, is_module_parent, resolve_backend, used_config, user_data, validate
from ecomp.app.provenance import repo_root
from ecomp.app.user_model import ModelSource
from ecomp.core.fitness import Weights
from ecomp.errors import CheckpointError, ConfigError, invalid
from ecomp.kernels.backend import Backend
from ecomp.methods import Method, method_class
from ecomp.nets.kinds import blueprint_for, precisions
from ecomp.nets.parent import TrainSpec
from ecomp.nets.user_data import UserData, identity


@dataclass(frozen=True)
class DataSpec:
    name: str
    root: Path
    download: bool
    train_size: int
    val_size: int
    test_size: int
    batch_size: int
    user: UserData | None = None      # the user's own images (data=folder | tensors), else None


@dataclass(frozen=True)
class ParentSpec:
    recipe: TrainSpec              # the shape (a blueprint) and how it is, or would be, trained
    path: str | None               # a checkpoint's file; None: the tool trains ``recipe`` (or ``model``)
    sha256: str | None             # the checkpoint's bytes (parent=module: its weights' bytes)
    cache_dir: Path                # where the tool keeps the parents it trained
    model: ModelSource | None = None   # parent=module: the user's nn.Module and weights


@dataclass(frozen=True)
class StoreSpec:
    """``tracking.*``, with the store's URI and artifact location resolved."""
    enabled: bool
    uri: str
    experiment: str
    artifact_location: str | None
    skip_finished: bool
    flush_every: int
    timeout_s: float
    log_model: bool
    register_as: str | None
    parent_run: str | None
    tags: tuple[tuple[str, str], ...]      # extra (key, value) tags of the run (picklable: crosses processes)


@dataclass(frozen=True)
class RunSpec:
    parent: ParentSpec
    data: DataSpec
    store: StoreSpec
    method: Method
    backend: Backend
    seed: int
    threads: int | None
    progress: bool
    config_hash: str
    kernels_tag: str | None        # what the similarity ran on (a run's ``kernels`` tag), None if unread
    config: Mapping[str, Any]      # the resolved config as plain values: logged as params and config.yaml

    @property
    def run_name(self) -> str:
        return self.method.run_name(self.seed)

    @property
    def model_name(self) -> str:
        """The logged model's name: the run's, led by its method (``ecomp-121-seed9``,
        ``l1_prune-keep0_5-seed3``), so that models from several runs can be told apart in the
        Models tab. MLflow refuses ``/ : . % " '`` in a model's name: each becomes ``_``."""
        method, run = self.method.name, self.run_name
        name = run if run.startswith(f"{method}-") else f"{method}-{run}"
        return "".join("_" if c in "/:.%\"'" else c for c in name)

    def params(self) -> dict[str, Any]:
        """The config the method reads, flat (``fitness.w_acc``), for the run's parameters."""
        return _flatten(used_config(_thaw(self.config), self.method.groups_unused))


def data_spec(cfg: DictConfig) -> DataSpec:
    d = cfg.data
    root = Path(d.root) if d.root else repo_root() / "data"
    return DataSpec(d.name, root, bool(d.download), int(d.train_size), int(d.val_size), int(d.test_size),
                    int(d.batch_size), user_data(d))


def store_spec(cfg: DictConfig) -> StoreSpec:
    """``cfg.tracking`` with its store resolved (:mod:`ecomp.app.store`)."""
    from ecomp.app.store import artifact_location, default_uri

    t = cfg.tracking
    uri = t.uri or default_uri(repo_root())
    return StoreSpec(bool(t.enabled), uri, t.experiment, artifact_location(t.artifact_location, uri),
                     bool(t.skip_finished), int(t.flush_every), float(t.timeout_s), bool(t.log_model), t.register_as,
                     t.parent_run, tuple((str(k), str(v)) for k, v in (t.tags or {}).items()))


def build(cfg: DictConfig, caches: Caches | None = None, scenario: str | None = None) -> RunSpec:
    """The run ``cfg`` describes; :class:`ConfigError` (one line) for anything out of range."""
    caches = caches or Caches()
    validate(cfg)
    # the run's own keys: a sweep's set-up hands in configs that still hold Hydra's node
    config = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    data = data_spec(cfg)
    parent, described = resolve_parent(config["parent"], data, caches)
    config["parent"].update(described)                   # the parent as read: what is logged and hashed
    depth = parent.recipe.arch.feature_layers
    layers = config["similarity"]["layers"]
    if layers is not None and any(not 0 <= l < depth for l in layers):
        raise invalid("similarity.layers", list(layers), f"hidden representation indices in [0, {depth - 1}] (a chain's prunable layers, a ResNet's blocks)")
    if config["evolution"]["precision"] not in precisions(parent.recipe.arch):
        raise invalid("evolution.precision", config["evolution"]["precision"],
                      "float32 on an MLP parent (bfloat16 runs a CNN's or ResNet's forward passes)")
    f = config["fitness"]
    method_conf = {k: v for k, v in config["method"].items() if k != "_target_"}
    method = method_class(config["method"]["_target_"]).from_settings(
        method_conf, config, scenario or Weights(f["w_acc"], f["w_sim"], f["w_comp"]).scenario)
    reads_similarity = "similarity" not in method.groups_unused
    backend = resolve_backend(cfg.device, cfg.similarity.kernels, reads_similarity)
    chash = config_hash(config, exclude=method.groups_unused,
                        method={"name": method.name, **method.setting_values()},
                        extra={**({"parent_sha256": parent.sha256} if parent.sha256 else {}),
                               **({"data_identity": identity(data.user)} if data.user else {})} or None)
    kernels = None
    if reads_similarity and cfg.similarity.kernels is not None:
        kernels = backend.kernels if cfg.evolution.evaluator == "fast" else "reference"
    return RunSpec(parent=parent, data=data, store=store_spec(cfg), method=method, backend=backend,
                   seed=int(cfg.seed), threads=cfg.threads, progress=bool(cfg.progress), config_hash=chash,
                   kernels_tag=kernels,
                   config=_freeze(config))


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A spec's frozen config as ordinary dicts and lists (for YAML and JSON)."""
    return _thaw(config)


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolve_parent(settings: Mapping[str, Any], data: DataSpec, caches: Caches) -> tuple[ParentSpec, dict[str, Any]]:
    """The parent ``parent.*`` ``settings`` describe, and the settings it fills in: for a parent the
    tool trains, ``input_dim`` and ``classes`` when null (the dataset's); for ``parent=checkpoint``
    the shape read from the file, for ``parent=module`` the shape read from the user's module's
    exported graph (:mod:`ecomp.app.user_model`), checked against the data. Raises
    :class:`ConfigError` (one line) before anything is created."""
    from ecomp.nets.checkpoint import check_fits
    from ecomp.nets.data import dataset

    ds, p = dataset(data.name, data.user), settings
    cache_dir = Path(p["cache_dir"]) if p["cache_dir"] else repo_root() / ".cache" / "parents"
    recipe = dict(epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], seed=p["seed"],
                  data=data.name if data.user is None else identity(data.user))
    if is_module_parent(p):
        source = ModelSource.of(p["model"], p["weights"], tuple(ds.shape))
        net, sha = caches.model(source)
        where = f"parent.model={source.target}"
    elif p["path"] is None:
        blueprint = blueprint_for(p["kind"], ds.shape, ds.classes, p)
        why = blueprint.problems()
        if why:
            raise ConfigError(f"parent={p['kind']} on data={ds.name} ({'x'.join(map(str, ds.shape))} images): {why}")
        filled = {"input_dim": p["input_dim"] or ds.input_dim, "classes": p["classes"] or ds.classes}
        spec = TrainSpec(blueprint, **recipe, batchnorm=bool(p["batchnorm"]))
        return ParentSpec(spec, None, None, cache_dir), filled
    else:
        net, sha = caches.checkpoint(p["path"])
        where, source = f"parent.path={str(p['path'])!r}", None
    check_fits(net, where, ds.input_dim if p["input_dim"] is None else p["input_dim"],
               ds.classes if p["classes"] is None else p["classes"], ds.name)
    if len(net.in_shape) > 1 and tuple(net.in_shape) != tuple(ds.shape):
        raise CheckpointError(f"{where}: the network takes {'x'.join(map(str, net.in_shape))} images but "
                              f"data={ds.name} has {'x'.join(map(str, ds.shape))} images")
    path = None if source is not None else str(p["path"])
    return ParentSpec(TrainSpec(net.blueprint(), **recipe), path, sha, cache_dir, source), net.settings()
