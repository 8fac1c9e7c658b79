"""From a composed config to a tracked run of one compression method: the glue between the algorithms and the tools."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ecomp.nets import data as data_mod
from ecomp.core.fitness import Weights
from ecomp.app.config import config_hash, resolve_backend, used_config, validate
from ecomp.app.credentials import mask
from ecomp.methods.metrics import network_metrics
from ecomp.methods import Method, Problem, method_class
from ecomp.nets.network import Architecture, accuracy, save_network
from ecomp.nets.parent import TrainSpec, cached_parent
from ecomp.kernels.runtime import keep_freed_memory
from ecomp.timing import NullTimer, PhaseTimer

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_root() -> Path:
    """The checkout holding ``conf/`` (editable install), else the working directory."""
    return REPO_ROOT if (REPO_ROOT / "conf").is_dir() else Path.cwd()


def scenario_name(cfg: DictConfig) -> str:
    f = cfg.fitness
    return Weights(f.w_acc, f.w_sim, f.w_comp).scenario


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def tracking_uri(cfg: DictConfig) -> str:
    from ecomp.app.tracking import default_uri

    return cfg.tracking.uri or default_uri(repo_root())


def artifact_location(cfg: DictConfig, uri: str) -> str | None:
    from ecomp.app.tracking import default_artifact_location

    if cfg.tracking.artifact_location:
        return cfg.tracking.artifact_location
    # a database store keeps artifacts next to the repository; a server keeps its own
    return None if uri.startswith(("http://", "https://")) else default_artifact_location(repo_root())


def prepare_store(cfg: DictConfig) -> tuple[str, str]:
    """Check the store answers and create the experiment; returns ``(uri, experiment_id)``."""
    from ecomp.app.tracking import check_reachable, ensure_experiment

    uri = tracking_uri(cfg)
    check_reachable(uri, cfg.tracking.timeout_s)
    return uri, ensure_experiment(uri, cfg.tracking.experiment, artifact_location(cfg, uri))


def data_root(cfg: DictConfig) -> Path:
    return Path(cfg.data.root) if cfg.data.root else repo_root() / "data"


def train_spec(cfg: DictConfig) -> TrainSpec:
    p = cfg.parent
    return TrainSpec(Architecture(p.input_dim, tuple(p.hidden), p.classes), p.epochs, p.lr, p.batch_size, p.seed)


def parent_cache_dir(cfg: DictConfig) -> Path:
    """Where trained parents are kept: ``parent.cache_dir``, else ``<repo>/.cache/parents``."""
    return Path(cfg.parent.cache_dir) if cfg.parent.cache_dir else repo_root() / ".cache" / "parents"


# Checkpoints already read in this process, keyed by the file's identity: resolving the config
# and preparing the parent both need them, and a sweep's jobs share them.
_CHECKPOINTS: dict[tuple, tuple[list, str]] = {}


def _checkpoint(path: str) -> tuple[list, str]:
    """``(layers, sha256)`` of the checkpoint at ``path`` (read once per process while unchanged)."""
    from ecomp.nets.checkpoint import read_checkpoint

    p = Path(path).expanduser()
    st = p.stat() if p.is_file() else None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns) if st else None
    if key is None or key not in _CHECKPOINTS:
        read = read_checkpoint(p)                        # CheckpointError (one line) if unusable
        _CHECKPOINTS.clear()
        _CHECKPOINTS[key] = read
    return _CHECKPOINTS[key]


def resolve_parent(cfg: DictConfig) -> str | None:
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
    layers, sha = _checkpoint(p.path)
    where = f"parent.path={str(p.path)!r}"
    check_fits(layers, where, ds.input_dim if p.input_dim is None else p.input_dim,
               ds.classes if p.classes is None else p.classes, ds.name)
    p.input_dim, p.classes = layers[0][0].shape[1], layers[-1][0].shape[0]
    p.hidden = [w.shape[0] for w, _ in layers[:-1]]
    validate(cfg)                                  # settings that depend on the depth (similarity.layers)
    return sha


def setup(cfg: DictConfig) -> str | None:
    """Check the config and fill in the parent's shape: :func:`validate`, then :func:`resolve_parent`."""
    validate(cfg)
    return resolve_parent(cfg)


def load_split(cfg: DictConfig, train: bool) -> "data_mod.Split":
    return data_mod.load(data_root(cfg), train=train, download=cfg.data.download, name=cfg.data.name)


def prepare_parent(cfg: DictConfig):
    """Data and parent network (the user's checkpoint, or trained once and then read from the
    cache); the config must have been through :func:`setup`."""
    if cfg.parent.input_dim is None or cfg.parent.hidden is None:
        resolve_parent(cfg)
    train = load_split(cfg, train=True)
    if cfg.parent.path is not None:
        return train, _checkpoint(cfg.parent.path)[0]
    t = time.perf_counter()
    layers, trained = cached_parent(train_spec(cfg), parent_cache_dir(cfg), train)
    if trained:
        log.info("trained the parent in %.1f s", time.perf_counter() - t)
    return train, layers


@dataclass
class RunResult:
    run_id: str | None
    skipped: bool
    metrics: dict[str, float]
    history: list[dict[str, float]]


def _set_threads(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))


def build_method(cfg: DictConfig, scenario: str | None = None) -> Method:
    """The method ``method._target_`` names, built from the config (already validated)."""
    return method_class(cfg.method._target_).from_config(cfg, scenario)


def run_experiment(cfg: DictConfig, scenario: str | None = None, sweep: str | None = None,
                   timer: PhaseTimer | None = None) -> RunResult:
    """Validate, build, compress, measure, track. The single entry point behind ``run.py``."""
    parent_sha = setup(cfg)
    method = build_method(cfg, scenario or scenario_name(cfg))
    reads_similarity = "similarity" not in method.groups_unused
    backend = resolve_backend(cfg, reads_similarity)
    _set_threads(cfg)
    keep_freed_memory()
    timer = timer or NullTimer()
    chash = config_hash(cfg, exclude=method.groups_unused,
                        method={"name": method.name, **method.setting_values()},
                        extra={"parent_sha256": parent_sha} if parent_sha else None)
    run_name = method.run_name(cfg.seed)
    tracker = None
    if cfg.tracking.enabled:
        from ecomp.app.tracking import TAG_HASH, TAG_METHOD, TAG_SEED, TAG_SWEEP, TAG_VARIANT, RunTracker, check_reachable

        uri = tracking_uri(cfg)
        check_reachable(uri, cfg.tracking.timeout_s)            # fails in seconds, before any work
        commit = git_commit(repo_root())
        tags = {TAG_METHOD: method.name, **method.labels(), TAG_VARIANT: method.variant(), TAG_SEED: str(cfg.seed),
                TAG_HASH: chash, "mlflow.source.name": Path(sys.argv[0]).name or "run.py",
                "mlflow.source.type": "LOCAL",
                "git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")}
        tags.update(method.tags())
        if parent_sha:
            tags["parent_sha256"] = parent_sha
        if reads_similarity and cfg.similarity.kernels is not None:
            tags["kernels"] = backend.kernels if cfg.evolution.evaluator == "fast" else "reference"
        if sweep:
            tags[TAG_SWEEP] = sweep
        tags.update({str(k): str(v) for k, v in (cfg.tracking.tags or {}).items()})
        if cfg.tracking.parent_run:
            tags["mlflow.parentRunId"] = cfg.tracking.parent_run
        params = {k: v for k, v in flatten(used_config(cfg, method.groups_unused)).items()
                  if not k.startswith(("tracking.tags.", "tracking.parent_run"))}   # logged as tags above
        params["tracking.uri"] = mask(uri)
        tracker = RunTracker(run_name, tags, params, cfg.tracking.flush_every)

    from ecomp.app.tracking import SkipRun

    try:
        if tracker is not None:
            # In a fresh process, importing MLflow and opening the store take about two seconds: they
            # run on a thread while the data, the parent and the first generations are computed.
            tracker.open(lambda t: _open_run(cfg, t, chash, sweep), background="mlflow" not in sys.modules)
        with (tracker or contextlib.nullcontext()):
            train, parent = prepare_parent(cfg)
            test = load_split(cfg, train=False)
            return _compress(cfg, method, backend, train, test, parent, run_name, timer, tracker)
    except SkipRun as skip:
        log.info("skipping %s: FINISHED run %s has this config", run_name, skip.run.info.run_id)
        return RunResult(skip.run.info.run_id, True, dict(skip.run.data.metrics), [])


def _open_run(cfg: DictConfig, tracker, chash: str, sweep: str | None) -> None:
    """Open the store, close this config's runs left RUNNING by a killed process, stop if it has a
    FINISHED run (:class:`ecomp.app.tracking.SkipRun`, unless ``tracking.skip_finished=false``), else
    create the run (a child of its sweep's parent run, when it has one)."""
    from ecomp.app.sweep_runs import sweep_run_id
    from ecomp.app.tracking import SkipRun, client_for, find_runs

    uri, exp_id = prepare_store(cfg)
    client = client_for(uri)
    for stale in find_runs(client, exp_id, chash, "RUNNING"):
        # A run of this very config left RUNNING was killed hard (SIGKILL, lost machine).
        log.warning("marking stale RUNNING run %s as KILLED", stale.info.run_id)
        client.set_tag(stale.info.run_id, "error", "left RUNNING by a killed process; marked KILLED by a later sweep")
        client.set_terminated(stale.info.run_id, status="KILLED")
    if cfg.tracking.skip_finished:
        done = find_runs(client, exp_id, chash, "FINISHED")
        if done:
            raise SkipRun(done[0])
    parent = sweep_run_id(client, exp_id, sweep) if sweep else None
    if parent is not None and "mlflow.parentRunId" not in tracker.tags:
        tracker.tags["mlflow.parentRunId"] = parent
    tracker.create(uri, exp_id)
    if cfg.tracking.log_model:                 # imported here, in the background, not after the run
        import mlflow.pytorch  # noqa: F401
        try:                                   # torch.export's heavy part: a private module, only a warm-up
            import torch.export._trace  # noqa: F401
        except ImportError:
            pass


# The parent's test accuracy, per process: every run of a sweep shares the parent and the
# test set, and a pass of the full parent over 10,000 images costs about 0.04 s. Keyed by
# the parent's bytes and the test split object (kept alive here, so its id is not reused).
_PARENT_ACCURACY: dict[tuple, tuple[float, data_mod.Split]] = {}


def parent_test_accuracy(parent: list, test: "data_mod.Split", size: int) -> float:
    h = hashlib.sha256()
    for w, b in parent:
        h.update(w.contiguous().numpy().tobytes())
        h.update(b.contiguous().numpy().tobytes())
    key = (h.hexdigest(), id(test), size)
    if key not in _PARENT_ACCURACY:
        if len(_PARENT_ACCURACY) >= 8:
            _PARENT_ACCURACY.clear()
        _PARENT_ACCURACY[key] = (accuracy(parent, test.x[:size], test.y[:size]), test)
    return _PARENT_ACCURACY[key][0]


# Digests of splits already hashed in this process (the test split is shared by every run of a sweep).
_DIGESTS: dict[int, tuple[str, object]] = {}


def _digest(split) -> str:
    """sha256 of a split's images and labels (first 16 hex digits): what MLflow shows as its digest."""
    if id(split.x) not in _DIGESTS:
        h = hashlib.sha256(split.x.contiguous().numpy().tobytes())
        h.update(split.y.contiguous().numpy().tobytes())
        if len(_DIGESTS) >= 16:
            _DIGESTS.clear()
        _DIGESTS[id(split.x)] = (h.hexdigest()[:16], split.x)     # keep the tensor alive: ids stay unique
    return _DIGESTS[id(split.x)][0]


def _dataset_inputs(cfg, run_data, test) -> dict[str, tuple[str, str, int, str]]:
    """The run's training subset, validation and test images as MLflow dataset inputs."""
    name, root = cfg.data.name, str(data_root(cfg))
    out = {"training": (f"{name}-subset", _digest(run_data.train), run_data.train.x.shape[0], root),
           "test": (f"{name}-test", _digest(test), test.x.shape[0], root)}
    if run_data.val.x.shape[0]:
        out["validation"] = (f"{name}-validation", _digest(run_data.val), run_data.val.x.shape[0], root)
    return out


def _compress(cfg, method: Method, backend, train, test, parent, run_name, timer, tracker) -> RunResult:
    """Run ``method`` on this run's data and measure what it returns: the one tail every method shares."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    device = backend.device
    gen = torch.Generator().manual_seed(int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
    run_data = data_mod.draw_run_data(train, cfg.data.train_size, cfg.data.val_size, gen)
    test_all, test = test, data_mod.Split(test.x[:cfg.data.test_size], test.y[:cfg.data.test_size])
    history: list[dict[str, float]] = []
    problem = Problem(parent=[(w.to(device), b.to(device)) for w, b in parent], recipe=train_spec(cfg),
                      data=run_data, batch_size=cfg.data.batch_size, generator=gen, seed=int(cfg.seed),
                      backend=backend, timer=timer)
    total = method.progress_total(problem)
    bar = tqdm(total=total, desc=run_name, disable=not cfg.progress or total is None, leave=False,
               dynamic_ncols=True)

    def on_generation(rec) -> None:
        history.append(rec.metrics)
        if tracker is not None:
            with timer.phase("tracking"):
                tracker.log_generation(rec.generation, rec.metrics)
        bar.update(1)
        bar.set_postfix(gen=rec.generation, acc=f"{rec.metrics['accuracy_mean']:.3f}",
                        comp=f"{rec.metrics['compression_mean']:.3f}",
                        sim=f"{rec.metrics['similarity_mean']:.3f}", refresh=False)

    problem.on_generation, problem.on_step = on_generation, lambda: bar.update(1)
    try:
        outcome = method.run(problem)
    finally:
        bar.close()
    best = [(w.detach().cpu(), b.detach().cpu()) for w, b in outcome.network]
    with timer.phase("forward"):
        metrics = network_metrics(best, parent, run_data.val, test)
    metrics.update(outcome.metrics)
    for stage, layers in outcome.stages.items():
        metrics.update(network_metrics(layers, parent, run_data.val, test, prefix=f"{stage}_"))
    metrics["parent_test_accuracy"] = parent_test_accuracy(parent, test_all, cfg.data.test_size)
    metrics["parent_val_accuracy"] = accuracy(parent, run_data.val.x, run_data.val.y) if cfg.data.val_size else math.nan
    metrics["run_seconds"] = time.perf_counter() - t0
    if tracker is not None:
        with timer.phase("tracking"):
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "config.yaml").write_text(mask(OmegaConf.to_yaml(cfg, resolve=True)))
                save_network(best, Path(tmp) / "best_network.pt",
                             extra={"method": method.name, **method.labels(), "seed": int(cfg.seed),
                                    "test_accuracy": metrics["best_test_accuracy"]})
                tracker.log_artifacts(Path(tmp))
            tracker.log_datasets(_dataset_inputs(cfg, run_data, test))
            if cfg.tracking.log_model:
                from ecomp.nets.network import model_from_layers

                version_tags = {"method": method.name, **method.labels(), "seed": str(cfg.seed),
                                "test_accuracy": f"{metrics['best_test_accuracy']:.4f}"}
                tracker.log_model(model_from_layers(best).eval(), test.x[:5].contiguous(), cfg.tracking.register_as,
                                  version_tags)
            metrics["run_seconds"] = time.perf_counter() - t0
            metrics["tracking_seconds"] = tracker.seconds
            tracker.log_metrics(metrics)
    log.info("%s: test accuracy %.4f (validation %.4f), relative size %.3f, parent %.4f, %.1f s", run_name,
             metrics["best_test_accuracy"], metrics["best_val_accuracy"], metrics["best_compression"],
             metrics["parent_test_accuracy"], metrics["run_seconds"])
    return RunResult(tracker.run_id if tracker else None, False, metrics, history)
