"""From a composed config to a tracked run of one compression method: the glue between the algorithms and the tools."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ecomp.app.caches import Caches
from ecomp.app.parents import load_split, prepare_parent
from ecomp.app.provenance import git_commit, repo_root
from ecomp.app.spec import DataSpec, RunSpec, build, plain
from ecomp.core.fitness import Weights
from ecomp.kernels.runtime import keep_freed_memory
from ecomp.methods import Problem
from ecomp.methods.metrics import cost_metrics, network_metrics
from ecomp.nets import data as data_mod
from ecomp.nets.network import save_network
from ecomp.nets.structure import accuracy, detached, to_device
from ecomp.redact import mask
from ecomp.timing import NullTimer, PhaseTimer

log = logging.getLogger(__name__)


def scenario_name(cfg: DictConfig) -> str:
    f = cfg.fitness
    return Weights(f.w_acc, f.w_sim, f.w_comp).scenario


@dataclass
class RunResult:
    run_id: str | None
    skipped: bool
    metrics: dict[str, float]
    history: list[dict[str, float]]


def run_experiment(cfg: DictConfig, scenario: str | None = None, sweep: str | None = None,
                   timer: PhaseTimer | None = None, caches: Caches | None = None) -> RunResult:
    """Read the config into a :class:`RunSpec` (everything checked before anything is created), then
    :func:`run` it. The single entry point behind ``run.py``; ``caches``: what the runs of this
    process share (None: nothing)."""
    caches = caches or Caches()
    return run(build(cfg, caches, scenario), sweep, timer, caches)


def run(spec: RunSpec, sweep: str | None = None, timer: PhaseTimer | None = None,
        caches: Caches | None = None) -> RunResult:
    """Compress, measure, track: the run ``spec`` describes."""
    caches = caches or Caches()
    method = spec.method
    if spec.threads:
        torch.set_num_threads(int(spec.threads))
    keep_freed_memory()
    timer = timer or NullTimer()
    run_name = spec.run_name
    tracker = None
    if spec.store.enabled:
        from ecomp.app.reachable import check_reachable
        from ecomp.app.store import TAG_HASH, TAG_METHOD, TAG_SEED, TAG_SWEEP, TAG_VARIANT
        from ecomp.app.tracking import RunTracker

        check_reachable(spec.store.uri, spec.store.timeout_s)        # fails in seconds, before any work
        commit = git_commit(repo_root())
        tags = {TAG_METHOD: method.name, **method.labels(), TAG_VARIANT: method.variant(), TAG_SEED: str(spec.seed),
                TAG_HASH: spec.config_hash, "mlflow.source.name": Path(sys.argv[0]).name or "run.py",
                "mlflow.source.type": "LOCAL",
                "git_commit": commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")}
        tags.update(method.tags())
        if spec.parent.sha256:
            tags["parent_sha256"] = spec.parent.sha256
        if spec.kernels_tag:
            tags["kernels"] = spec.kernels_tag
        if sweep:
            tags[TAG_SWEEP] = sweep
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():                # a Ray task: the node it ran on
            tags["ray_node"] = ray.get_runtime_context().get_node_id()
        tags.update(spec.store.tags)
        if spec.store.parent_run:
            tags["mlflow.parentRunId"] = spec.store.parent_run
        params = {k: v for k, v in spec.params().items()
                  if not k.startswith(("tracking.tags.", "tracking.parent_run"))}   # logged as tags above
        params["tracking.uri"] = mask(spec.store.uri)
        if "mlflow" in sys.modules:            # MLflow is loaded already (a test, an in-process trial)
            tracker = RunTracker(run_name, tags, params, spec.store.flush_every)
        else:
            # In a fresh process, importing MLflow and opening the store take seconds: a helper
            # process does them, and all the tracking, while the run computes.
            from ecomp.app.tracker_process import TrackerProcess

            tracker = TrackerProcess(run_name, tags, params, spec.store.flush_every)

    from ecomp.app.store import SkipRun

    try:
        if tracker is not None:
            tracker.open(spec.store, spec.config_hash, sweep)
        with (tracker or contextlib.nullcontext()):
            train, parent = prepare_parent(spec.parent, spec.data, caches)
            test = load_split(spec.data, train=False, caches=caches)
            return _compress(spec, caches, train, test, parent, timer, tracker)
    except SkipRun as skip:
        log.info("skipping %s: FINISHED run %s has this config", run_name, skip.run.info.run_id)
        return RunResult(skip.run.info.run_id, True, dict(skip.run.data.metrics), [])


def _dataset_inputs(data: DataSpec, caches: Caches, run_data, test) -> dict[str, tuple[str, str, int, str]]:
    """The run's training subset, validation and test images as MLflow dataset inputs."""
    name, root = data.name, str(data.root) if data.user is None else data.user.path
    out = {"training": (f"{name}-subset", caches.digest(run_data.train), run_data.train.x.shape[0], root),
           "test": (f"{name}-test", caches.digest(test), test.x.shape[0], root)}
    if run_data.val.x.shape[0]:
        out["validation"] = (f"{name}-validation", caches.digest(run_data.val), run_data.val.x.shape[0], root)
    return out


# The returned network's sizes, as its logged model's params: (param, metric of network_metrics).
MODEL_SIZES = (("network.hidden_units", "best_hidden_units"), ("network.parameters", "best_parameters"),
               ("network.macs", "best_macs"), ("network.relative_units", "best_compression"),
               ("network.relative_parameters", "best_params_ratio"), ("network.relative_macs", "best_macs_ratio"))


def _model_labels(spec: RunSpec, metrics: dict[str, float]) -> tuple[dict[str, str], dict[str, str]]:
    """``(tags, params)`` of the run's logged model: what tells it from its siblings (method,
    scenario or keep and the other labels, variant, seed, test accuracy) and the network's sizes
    (MLflow adds the run's params, its config, to the model's)."""
    method = spec.method
    tags = {"method": method.name, **method.labels(), "variant": method.variant(), "seed": str(spec.seed),
            "test_accuracy": f"{metrics['best_test_accuracy']:.4f}"}
    params = {param: f"{metrics[key]:g}" for param, key in MODEL_SIZES}
    return tags, params


def _image_shape(data: DataSpec, network) -> tuple[int, ...]:
    """What one input of the logged model is: an image ``(C, H, W)`` of the data (a CNN reads it as
    such; an MLP flattens it), or ``(features,)`` for an MLP whose input is not the data's image."""
    shape = tuple(network.in_shape)
    if len(shape) == 1:
        image = tuple(data_mod.dataset(data.name, data.user).shape)
        shape = image if math.prod(image) == network.in_features else shape
    return shape


def _compress(spec: RunSpec, caches: Caches, train, test, parent, timer, tracker) -> RunResult:
    """Run ``method`` on this run's data and measure what it returns: the one tail every method shares."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    method, data, run_name = spec.method, spec.data, spec.run_name
    device = spec.backend.device
    gen = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    run_data = data_mod.draw_run_data(train, data.train_size, data.val_size, gen)
    test_all, test = test, data_mod.Split(test.x[:data.test_size], test.y[:data.test_size])
    history: list[dict[str, float]] = []
    problem = Problem(parent=to_device(parent, device), recipe=spec.parent.recipe,
                      data=run_data, batch_size=data.batch_size, generator=gen, seed=spec.seed,
                      backend=spec.backend, timer=timer)
    total = method.progress_total(problem)
    bar = tqdm(total=total, desc=run_name, disable=not spec.progress or total is None, leave=False,
               dynamic_ncols=True)

    def on_generation(rec) -> None:
        history.append(rec.metrics)
        if tracker is not None:
            with timer.phase("tracking"):
                tracker.log_generation(rec.generation, rec.metrics)
        bar.update(1)
        bar.set_postfix(method.progress(rec), refresh=False)

    problem.on_generation, problem.on_step = on_generation, lambda: bar.update(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_method = time.perf_counter()
    try:
        outcome = method.run(problem)
    finally:
        bar.close()
    method_seconds = time.perf_counter() - t_method
    best = detached(outcome.network)
    with timer.phase("forward"):
        metrics = network_metrics(best, parent, run_data.val, test)
        metrics.update(cost_metrics(best, parent, test))
    metrics.update(outcome.metrics)
    for stage, layers in outcome.stages.items():
        metrics.update(network_metrics(layers, parent, run_data.val, test, prefix=f"{stage}_"))
    metrics["parent_test_accuracy"] = caches.parent_test_accuracy(parent, test_all, data.test_size)
    metrics["parent_val_accuracy"] = accuracy(parent, run_data.val.x, run_data.val.y) if data.val_size else math.nan
    metrics["run_seconds"] = time.perf_counter() - t0
    if history:                                 # the evolution's pace (baselines that train log no history)
        metrics["seconds_per_generation"] = method_seconds / len(history)
    if device.type == "cuda":                   # what the run held on the GPU at most
        metrics["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    if tracker is not None:
        from ecomp.app.tracking import keep_locally
        from ecomp.errors import TrackingError

        t_tracking, spent = time.perf_counter(), tracker.seconds
        with timer.phase("tracking"):
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "config.yaml").write_text(mask(OmegaConf.to_yaml(plain(spec.config))))
                for name, text in outcome.artifacts.items():     # the method's own tables
                    Path(tmp, name).write_text(text)
                network = Path(tmp) / "best_network.pt"
                save_network(best, network, extra={"method": method.name, **method.labels(), "seed": spec.seed,
                                                   "test_accuracy": metrics["best_test_accuracy"]})
                try:
                    tracker.log_artifacts(Path(tmp))
                    if spec.store.log_model:
                        requirements = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
                        tags, params = _model_labels(spec, metrics)
                        tracker.log_model(network, _image_shape(data, best), best.classes, requirements,
                                          spec.model_name, tags, params, spec.store.register_as)
                    tracker.log_datasets(_dataset_inputs(data, caches, run_data, test))
                    # run_seconds is the run's own work, the same with tracking or without; the time this
                    # thread spent on tracking (waiting for the store included) is tracking_seconds
                    metrics["tracking_seconds"] = spent + (time.perf_counter() - t_tracking)
                    tracker.log_metrics(metrics)
                    tracker.flush()
                except TrackingError as exc:      # the store failed: the results are kept on disk
                    raise keep_locally(exc, Path(tmp), metrics, history) from None
    log.info("%s: test accuracy %.4f (validation %.4f), relative size %.3f, parent %.4f, %.1f s", run_name,
             metrics["best_test_accuracy"], metrics["best_val_accuracy"], metrics["best_compression"],
             metrics["parent_test_accuracy"], metrics["run_seconds"])
    return RunResult(tracker.run_id if tracker else None, False, metrics, history)
