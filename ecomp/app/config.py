"""The configuration schema (structured configs) and the one place where values are range-checked.

The dataclasses are the schema Hydra merges every YAML into, so a typo or a
wrong type fails at composition. :func:`validate` then checks ranges and
cross-field rules and raises :class:`ConfigError` with one line naming the
key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from ecomp.core.mutation import MutationSpec
from ecomp.core.selection import KINDS, Selection
from ecomp.errors import ConfigError

FITNESS_SCENARIOS = ("001", "020", "100", "021", "120", "101", "121")


@dataclass
class ParentConf:
    """``parent=mlp``: trained by the tool (``hidden`` and the recipe); ``parent=checkpoint``: read
    from ``path`` (``hidden``, ``input_dim``, ``classes`` from the weights; the recipe is then what
    ``method=scratch`` trains with); ``parent=module``: the user's class ``model`` (``_target_`` and its
    arguments) loaded with ``weights`` (:mod:`ecomp.app.user_model`). ``input_dim`` and ``classes``
    null: the dataset's. Both are filled in before the run starts (:func:`ecomp.app.spec.resolve_parent`)."""
    input_dim: Optional[int] = None
    hidden: Optional[list[int]] = field(default_factory=lambda: [256, 256])
    classes: Optional[int] = None
    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 100
    seed: int = 0
    cache_dir: Optional[str] = None   # default: <repo>/.cache/parents
    path: Optional[str] = None        # parent=checkpoint: the user's trained network
    kind: str = "mlp"                 # the layer kind (ecomp.nets.kinds): mlp | cnn | resnet; a checkpoint's is read from the file
    channels: Optional[list[int]] = None   # cnn: output channels of each convolution
    kernel: Optional[int] = None           # cnn: square kernel size of every convolution
    padding: Optional[list[int]] = None    # cnn: zero padding of each convolution (missing: 0)
    pool: Optional[int] = None             # cnn: max-pooling window (= stride) after each convolution; 1 = none
    batchnorm: bool = False                # cnn: trained with BatchNorm after each convolution (then folded)
    depth: Optional[int] = None            # resnet: 6n + 2 layers (n basic blocks per stage)
    widths: Optional[list[int]] = None     # resnet: channels of each stage
    # module: your nn.Module class (_target_) and its arguments; open (not struct), so that
    # parent.model.<argument>=... needs no "+" (the class's arguments are not known to the schema)
    model: Any = field(default_factory=lambda: OmegaConf.create({}, flags={"struct": False}))
    weights: Optional[str] = None          # module: the state dict (.pt) of parent.model's weights


@dataclass
class DataConf:
    name: str = "fashion_mnist"
    root: Optional[str] = None        # default: <repo>/data
    download: bool = False
    train_size: int = 10_000
    val_size: int = 5_000             # held out from the training images outside the subset
    test_size: int = 10_000
    batch_size: int = 100
    # the user's own images (data=folder | tensors, ecomp/nets/user_data.py); null for the others
    path: Optional[str] = None        # the class-per-folder tree, or the .pt / .npz file
    size: Optional[list[int]] = None  # folder: [height, width] every image is resized to
    channels: Optional[int] = None    # folder: 1 (grey) or 3 (RGB)
    mean: Optional[list[float]] = None  # per channel, with std: (x - mean) / std
    std: Optional[list[float]] = None
    test_fraction: Optional[float] = None  # of all images, when the data has no test split of its own
    split_seed: Optional[int] = None       # the draw of that test split (the same for every run)


@dataclass
class KeepRatioConf:
    high: float = 0.9
    low: float = 0.207


@dataclass
class PopulationConf:
    size: int = 100
    keep_ratio: KeepRatioConf = field(default_factory=KeepRatioConf)


@dataclass
class OperatorsConf:
    """The operators' own dataclasses are the schema: one source for each default."""
    mutation: MutationSpec = field(default_factory=MutationSpec)
    selection: Selection = field(default_factory=Selection)


@dataclass
class SimilarityConf:
    """Every ``similarity.*`` key any measure has; ``conf/similarity/<name>.yaml`` names the
    measure's class and sets the keys it reads (the others null)."""
    _target_: str = "ecomp.measures.tsne.TSNE"
    perplexity: Optional[float] = 30.0
    layers: Optional[list[int]] = None   # hidden layers compared; None: all
    tol: Optional[float] = 1e-5
    kernels: Optional[str] = "auto"      # auto | native | torch (ecomp.kernels.native)
    features: Optional[str] = "flat"     # what a conv stage offers: flat maps | pooled (each channel's mean)


@dataclass
class FitnessConf:
    w_acc: float = 1.0
    w_sim: float = 2.0
    w_comp: float = 1.0
    compression: str = "units"           # units: hidden units / the parent's (the paper) | params | macs


@dataclass
class EvolutionConf:
    epochs: int = 1
    evaluator: str = "fast"              # fast | reference
    precision: str = "float32"           # float32 (the paper) | bfloat16 (a CNN's or ResNet's forward passes)


@dataclass
class TrackingConf:
    enabled: bool = True
    uri: Optional[str] = None            # default: sqlite:///<repo>/mlruns/mlflow.db
    experiment: str = "ecomp"
    artifact_location: Optional[str] = None  # default: <sqlite file's folder>/artifacts (<repo>/mlruns/artifacts)
    skip_finished: bool = True
    flush_every: int = 25
    timeout_s: float = 10.0
    log_model: bool = True               # the returned network as an MLflow Model (PyTorch flavour, pt2)
    register_as: Optional[str] = None    # also a new version of this registered model per run
    parent_run: Optional[str] = None     # MLflow run id this run is nested under (tag mlflow.parentRunId)
    tags: dict[str, str] = field(default_factory=dict)   # extra tags on the run (e.g. an Optuna study's)


@dataclass
class Config:
    parent: ParentConf = field(default_factory=ParentConf)
    data: DataConf = field(default_factory=DataConf)
    population: PopulationConf = field(default_factory=PopulationConf)
    operators: OperatorsConf = field(default_factory=OperatorsConf)
    similarity: SimilarityConf = field(default_factory=SimilarityConf)
    fitness: FitnessConf = field(default_factory=FitnessConf)
    # A method's keys are its own (its class's ``settings``, its YAML's keys): not typed here.
    method: Any = field(default_factory=lambda: {"_target_": "ecomp.methods.ecomp.ECompMethod"})
    evolution: EvolutionConf = field(default_factory=EvolutionConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None        # torch threads; default: all cores (or cores / jobs)
    progress: bool = True


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (``conf/config.yaml`` lists it first)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="ecomp_schema", node=Config)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"invalid config: {key}={value!r}: {allowed}")


def user_data(d: Any):
    """The :class:`ecomp.nets.user_data.UserData` of a ``data=folder|tensors`` config (None for the
    built-in datasets), its keys checked."""
    from ecomp.nets.user_data import KINDS, UserData

    if d.name not in KINDS:
        for key in ("path", "size", "channels", "mean", "std", "test_fraction", "split_seed"):
            if d[key] is not None:
                _fail(f"data.{key}", d[key], f"null: data={d.name} is a built-in dataset (the key is "
                                             f"for your own images, data=folder or data=tensors)")
        return None
    if not d.path:
        _fail("data.path", d.path, f"the {'folder of class folders' if d.name == 'folder' else '.pt or .npz file'} "
                                   f"to read (data={d.name})")
    channels = d.channels if d.name == "folder" else 1
    if d.name == "folder":
        if d.size is None or len(d.size) != 2 or not all(isinstance(v, int) and v >= 1 for v in d.size):
            _fail("data.size", d.size, "[height, width]: positive integers every image is resized to")
        if channels not in (1, 3):
            _fail("data.channels", channels, "1 (grey) or 3 (RGB)")
    if (d.mean is None) != (d.std is None):
        _fail("data.mean" if d.mean is None else "data.std", None, "given together with data.std / data.mean, or both null")
    for key in ("mean", "std"):
        values = d[key]
        if values is not None and (not all(_finite(v) for v in values) or (key == "std" and min(values, default=1) <= 0)):
            _fail(f"data.{key}", list(values), "finite numbers, one per channel" + (", each > 0" if key == "std" else ""))
    fraction = 0.2 if d.test_fraction is None else d.test_fraction
    if not (_finite(fraction) and 0 < fraction < 1):
        _fail("data.test_fraction", fraction, "a number in (0, 1): the share of the images held out for the test")
    return UserData(d.name, str(d.path), tuple(d.size) if d.size is not None else None, channels,
                    tuple(d.mean) if d.mean is not None else None, tuple(d.std) if d.std is not None else None,
                    float(fraction), int(d.split_seed or 0))


def _user_dataset(d: Any):
    """The user's dataset, read and checked: its errors as one ``data.path`` line."""
    from ecomp.errors import DataError
    from ecomp.nets.user_data import describe

    try:
        return describe(user_data(d))
    except DataError as exc:
        raise ConfigError(f"invalid config: {exc}") from None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def validate(cfg: DictConfig) -> None:
    """Check every range and cross-field rule; raise :class:`ConfigError` on the first violation."""
    f = cfg.fitness
    for k in ("w_acc", "w_sim", "w_comp"):
        if not _finite(f[k]) or f[k] < 0:
            _fail(f"fitness.{k}", f[k], "a finite number >= 0")
    if f.w_acc == 0 and f.w_sim == 0 and f.w_comp == 0:
        _fail("fitness", "w_acc=w_sim=w_comp=0", "at least one weight must be > 0")
    p = cfg.population
    if p.size < 2 or p.size % 2:
        _fail("population.size", p.size, "an even integer >= 2 (pairs make two children each)")
    kr = p.keep_ratio
    for k in ("low", "high"):
        if not _finite(kr[k]) or not 0 < kr[k] <= 1:
            _fail(f"population.keep_ratio.{k}", kr[k], "a ratio in (0, 1]")
    if kr.low > kr.high:
        _fail("population.keep_ratio", f"low={kr.low} > high={kr.high}", "low <= high")
    m = cfg.operators.mutation
    if not _finite(m.rate) or not 0 <= m.rate <= 1:
        _fail("operators.mutation.rate", m.rate, "a probability in [0, 1]")
    if not (_finite(m.low) and _finite(m.high)) or m.low > m.high:
        _fail("operators.mutation", f"low={m.low} > high={m.high}", "finite factors with low <= high")
    sel = cfg.operators.selection
    if sel.kind not in KINDS:
        _fail("operators.selection.kind", sel.kind, f"one of {', '.join(KINDS)}")
    if not _finite(sel.temperature) or sel.temperature <= 0:
        _fail("operators.selection.temperature", sel.temperature, "a number > 0 (1 = the paper's roulette)")
    if not 1 <= sel.tournament_size <= p.size:
        _fail("operators.selection.tournament_size", sel.tournament_size,
              f"an integer in [1, population.size = {p.size}]")
    if sel.elite < 0 or sel.elite % 2 or sel.elite >= p.size:
        _fail("operators.selection.elite", sel.elite,
              f"an even integer in [0, population.size = {p.size}) (the rest are bred in pairs)")
    d = cfg.data
    from ecomp.nets.datasets import DATASETS
    from ecomp.nets.user_data import KINDS as USER_DATA

    if d.name not in DATASETS and d.name not in USER_DATA:
        _fail("data.name", d.name, f"one of {', '.join([*DATASETS, *USER_DATA])} (data=<name>)")
    ds = DATASETS[d.name] if d.name in DATASETS else _user_dataset(d)
    if not 1 <= d.train_size <= ds.n_train:
        _fail("data.train_size", d.train_size, f"an integer in [1, {ds.n_train}] (data={ds.name} has "
                                                f"{ds.n_train} training images)")
    if not 0 <= d.val_size <= ds.n_train - d.train_size:
        _fail("data.val_size", d.val_size, f"an integer in [0, {ds.n_train} - data.train_size = "
                                            f"{ds.n_train - d.train_size}] (data={ds.name}'s training images "
                                            f"outside the subset)")
    if not 1 <= d.test_size <= ds.n_test:
        _fail("data.test_size", d.test_size, f"an integer in [1, {ds.n_test}] (data={ds.name} has "
                                              f"{ds.n_test} test images)")
    if not 2 <= d.batch_size <= d.train_size:
        _fail("data.batch_size", d.batch_size, f"an integer in [2, data.train_size={d.train_size}]")
    if d.train_size % d.batch_size:
        _fail("data.batch_size", d.batch_size,
              f"must divide data.train_size={d.train_size} (every generation sees a full batch)")
    s = cfg.similarity
    from ecomp.measures.base import measure_class

    try:
        measure = measure_class(s._target_)
    except ValueError as exc:
        _fail("similarity._target_", s._target_, f"a similarity measure class ({exc})")
    for key in ("perplexity", "tol", "kernels"):
        if (s[key] is not None) != (key in measure.settings):
            _fail(f"similarity.{key}", s[key], f"similarity={measure.name} " + (
                "needs a value" if key in measure.settings else
                f"has no such setting (its settings: {', '.join(('layers', *measure.settings))})"))
    if "perplexity" in measure.settings and not 1 <= s.perplexity < d.batch_size - 1:
        _fail("similarity.perplexity", s.perplexity, f"a number in [1, data.batch_size - 1 = {d.batch_size - 1})")
    if "tol" in measure.settings and (not _finite(s.tol) or s.tol <= 0):
        _fail("similarity.tol", s.tol, "a number > 0")
    from ecomp.nets.convnet import FEATURES
    from ecomp.nets.sizes import SIZES

    if f.compression not in SIZES:
        _fail("fitness.compression", f.compression, f"one of {', '.join(SIZES)}")
    if s.features not in FEATURES:
        _fail("similarity.features", s.features, f"one of {', '.join(FEATURES)}")
    _validate_parent(cfg.parent)
    if s.layers is not None and not len(s.layers):        # indices are checked against the parent's depth
        _fail("similarity.layers", [], "null (all hidden layers) or a non-empty list")
    if cfg.evolution.epochs < 1:
        _fail("evolution.epochs", cfg.evolution.epochs, "an integer >= 1")
    from ecomp.kernels.backend import KERNELS                               # lazily: it imports torch

    if s.kernels is not None and s.kernels not in KERNELS:
        _fail("similarity.kernels", s.kernels, f"one of {', '.join(KERNELS)}")
    if cfg.evolution.evaluator not in ("fast", "reference"):
        _fail("evolution.evaluator", cfg.evolution.evaluator, "one of fast, reference")
    if cfg.evolution.precision not in PRECISIONS:
        _fail("evolution.precision", cfg.evolution.precision, f"one of {', '.join(PRECISIONS)}")
    if cfg.evolution.precision != "float32" and cfg.evolution.evaluator == "reference":
        _fail("evolution.precision", cfg.evolution.precision, "float32 with evolution.evaluator=reference (the oracle)")
    if cfg.threads is not None and cfg.threads < 1:
        _fail("threads", cfg.threads, "null (all cores) or an integer >= 1")
    if cfg.tracking.register_as is not None and (not cfg.tracking.log_model or not str(cfg.tracking.register_as).strip()):
        _fail("tracking.register_as", cfg.tracking.register_as,
              "a model name, with tracking.log_model=true (the registry holds logged models)")
    if cfg.tracking.flush_every < 1:
        _fail("tracking.flush_every", cfg.tracking.flush_every, "an integer >= 1")
    _check_device(cfg.device)
    validate_method(cfg.method)


def is_module_parent(p: Any) -> bool:
    """``parent=module``: the user's ``parent.model`` (with ``parent.weights``) is the parent."""
    return bool(p["model"]) or p["weights"] is not None


def _validate_module_parent(p: DictConfig) -> None:
    """``parent=module`` needs an import path in ``parent.model._target_`` and ``parent.weights``
    (the class and the file are checked when they are read, :func:`ecomp.app.spec.resolve_parent`)."""
    target = p.model.get("_target_") if isinstance(p.model, DictConfig) else None
    if not isinstance(p.model, DictConfig) or not isinstance(target, str) or not target.strip():
        _fail("parent.model._target_", target, "the import path of your nn.Module class (or a function that makes "
                                               "one), e.g. parent.model._target_=torchvision.models.resnet18; its "
                                               "arguments as parent.model.<name>=<value>")
    if p.weights is None or not str(p.weights).strip():
        _fail("parent.weights", p.weights, "the state dict (.pt) of parent.model's trained weights, as "
                                           "torch.save(model.state_dict(), path) writes it")
    if p.path is not None:
        _fail("parent.path", p.path, "null with parent=module (your network is parent.model loaded with "
                                     "parent.weights; parent=checkpoint reads a file alone)")


def _validate_parent(p: DictConfig) -> None:
    """A trained parent needs its architecture and recipe; a checkpoint needs only its path (the
    file itself is checked when it is read, :func:`ecomp.app.parents.resolve_parent`)."""
    module = is_module_parent(p)
    if module:
        _validate_module_parent(p)
    elif p.path is None and p.kind == "mlp" and p.hidden is None:     # parent=checkpoint without its file
        _fail("parent.path", None, "missing: parent=checkpoint reads your network from parent.path=<file.pt or "
                                   ".pt2> (parent=mlp trains one with parent.hidden widths)")
    for k in ("input_dim", "classes"):
        if p[k] is not None and p[k] < 1:
            _fail(f"parent.{k}", p[k], "null (the dataset's) or an integer >= 1")
    if p.path is not None and not str(p.path).strip():
        _fail("parent.path", p.path, "the path of a trained network's state dict (.pt) or export (.pt2)")
    from ecomp.nets.kinds import settings_problem

    problem = settings_problem(p.kind, OmegaConf.to_container(p), trained=p.path is None and not module)
    if problem:
        _fail(*problem)
    for k in ("epochs", "batch_size"):
        if p[k] < 1:
            _fail(f"parent.{k}", p[k], "an integer >= 1")
    if not _finite(p.lr) or p.lr <= 0:
        _fail("parent.lr", p.lr, "a number > 0")


def validate_method(m: DictConfig) -> None:
    """``method._target_`` names a compression method (its own settings it checks itself when
    it is built: :meth:`ecomp.methods.base.Method.from_settings`)."""
    from ecomp.methods.base import method_class

    try:
        method_class(m._target_)
    except ValueError as exc:
        _fail("method._target_", m._target_, f"a compression method class ({exc})")


def resolve_backend(device: str, kernels: str | None, reads_similarity: bool = True):
    """The run's :class:`ecomp.kernels.backend.Backend`, from ``device`` and (for a method that reads
    the similarity) ``similarity.kernels``; :class:`ConfigError` if ``native`` was asked for and
    cannot be had here."""
    from ecomp.kernels.backend import BackendError, resolve

    # a method that reads no similarity never needs the C similarity kernels (nor their build)
    kernels = (kernels or "auto") if reads_similarity else "torch"
    try:
        return resolve(device, kernels)
    except BackendError as exc:
        _fail("similarity.kernels", kernels, f"{str(exc).splitlines()[0]}; use auto or torch")


def _check_device(device: str) -> None:
    from ecomp.kernels.backend import usable_devices

    allowed = usable_devices(device)
    if allowed is not None:
        _fail("device", device, allowed)


# Keys that do not change a run's numbers: excluded from the config hash that
# identifies a run for resuming sweeps.
_HASH_EXCLUDED = ("tracking", "progress", "threads", "hydra")
# Keys left out of the hash while they hold the value that reproduces the behaviour from before
# they existed: a run of an unchanged config keeps its hash, so recorded sweeps are still
# recognised (and skipped).
PRECISIONS = ("float32", "bfloat16")   # evolution.precision (ecomp.core.fitness.Evaluator)

HASH_NEUTRAL = {("fitness", "compression"): "units", ("parent", "path"): None, ("parent", "kind"): "mlp",
                ("parent", "channels"): None, ("parent", "kernel"): None, ("parent", "padding"): None,
                ("parent", "pool"): None, ("parent", "batchnorm"): False,
                ("parent", "depth"): None, ("parent", "widths"): None, ("parent", "model"): {},
                ("parent", "weights"): None, ("similarity", "features"): "flat",
                ("evolution", "precision"): "float32",
                **{("data", k): None for k in ("path", "size", "channels", "mean", "std", "test_fraction",
                                               "split_seed")}}


def used_config(cfg: DictConfig | dict, unused: tuple[str, ...]) -> dict:
    """The resolved config as a dict, without the top-level groups in ``unused``."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(cfg)
    for k in unused:
        c.pop(k, None)
    return c


def config_hash(cfg: DictConfig | dict, exclude: tuple[str, ...] = (), method: dict | None = None,
                extra: dict | None = None) -> str:
    """A short, stable hash of the effective config, without tracking and launcher keys, without
    the groups in ``exclude`` (those the run's method does not read), with the ``method``
    group replaced by ``method`` (the settings that shape the result) when given, and with
    ``extra`` (e.g. a checkpoint's content digest) added."""
    c = used_config(cfg, (*_HASH_EXCLUDED, *exclude))
    for (group, key), neutral in HASH_NEUTRAL.items():
        if group in c and key in c[group] and c[group][key] == neutral:
            del c[group][key]
    if extra:
        c.update(extra)
    if method is not None:
        c["method"] = method
        if "selection" in method:                  # the method's effective selection settings instead
            c.get("operators", {}).pop("selection", None)
    return _hash(c)


def _hash(c: dict) -> str:
    text = OmegaConf.to_yaml(OmegaConf.create(c), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
