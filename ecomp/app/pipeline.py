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
from ecomp.app.config import config_hash, resolve_backend, used_config
from ecomp.app.parents import data_root, load_split, prepare_parent, setup, train_spec
from ecomp.app.provenance import git_commit, repo_root
from ecomp.app.store import tracking_uri
from ecomp.core.fitness import Weights
from ecomp.kernels.runtime import keep_freed_memory
from ecomp.methods import Method, Problem, method_class
from ecomp.methods.metrics import cost_metrics, network_metrics
from ecomp.nets import data as data_mod
from ecomp.nets.network import save_network
from ecomp.nets.structure import accuracy, detached, logits, to_device
from ecomp.redact import mask
from ecomp.timing import NullTimer, PhaseTimer

log = logging.getLogger(__name__)


def scenario_name(cfg: DictConfig) -> str:
    f = cfg.fitness
    return Weights(f.w_acc, f.w_sim, f.w_comp).scenario


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


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
                   timer: PhaseTimer | None = None, caches: Caches | None = None) -> RunResult:
    """Validate, build, compress, measure, track. The single entry point behind ``run.py``;
    ``caches``: what the runs of this process share (None: nothing)."""
    caches = caches or Caches()
    parent_sha = setup(cfg, caches)
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
        from ecomp.app.reachable import check_reachable
        from ecomp.app.tracking import TAG_HASH, TAG_METHOD, TAG_SEED, TAG_SWEEP, TAG_VARIANT, RunTracker

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
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():                # a Ray task: the node it ran on
            tags["ray_node"] = ray.get_runtime_context().get_node_id()
        tags.update({str(k): str(v) for k, v in (cfg.tracking.tags or {}).items()})
        if cfg.tracking.parent_run:
            tags["mlflow.parentRunId"] = cfg.tracking.parent_run
        params = {k: v for k, v in flatten(used_config(cfg, method.groups_unused)).items()
                  if not k.startswith(("tracking.tags.", "tracking.parent_run"))}   # logged as tags above
        params["tracking.uri"] = mask(uri)
        if "mlflow" in sys.modules:            # MLflow is loaded already (a test, an in-process trial)
            tracker = RunTracker(run_name, tags, params, cfg.tracking.flush_every)
        else:
            # In a fresh process, importing MLflow and opening the store take seconds: a helper
            # process does them, and all the tracking, while the run computes.
            from ecomp.app.tracker_process import TrackerProcess

            tracker = TrackerProcess(run_name, tags, params, cfg.tracking.flush_every)

    from ecomp.app.tracking import SkipRun

    try:
        if tracker is not None:
            tracker.open(cfg, chash, sweep)
        with (tracker or contextlib.nullcontext()):
            train, parent = prepare_parent(cfg, caches)
            test = load_split(cfg, train=False, caches=caches)
            return _compress(cfg, method, backend, caches, train, test, parent, run_name, timer, tracker)
    except SkipRun as skip:
        log.info("skipping %s: FINISHED run %s has this config", run_name, skip.run.info.run_id)
        return RunResult(skip.run.info.run_id, True, dict(skip.run.data.metrics), [])


def _dataset_inputs(cfg, caches: Caches, run_data, test) -> dict[str, tuple[str, str, int, str]]:
    """The run's training subset, validation and test images as MLflow dataset inputs."""
    name, root = cfg.data.name, str(data_root(cfg))
    out = {"training": (f"{name}-subset", caches.digest(run_data.train), run_data.train.x.shape[0], root),
           "test": (f"{name}-test", caches.digest(test), test.x.shape[0], root)}
    if run_data.val.x.shape[0]:
        out["validation"] = (f"{name}-validation", caches.digest(run_data.val), run_data.val.x.shape[0], root)
    return out


def _compress(cfg, method: Method, backend, caches: Caches, train, test, parent, run_name, timer,
              tracker) -> RunResult:
    """Run ``method`` on this run's data and measure what it returns: the one tail every method shares."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    device = backend.device
    gen = torch.Generator().manual_seed(int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
    run_data = data_mod.draw_run_data(train, cfg.data.train_size, cfg.data.val_size, gen)
    test_all, test = test, data_mod.Split(test.x[:cfg.data.test_size], test.y[:cfg.data.test_size])
    history: list[dict[str, float]] = []
    problem = Problem(parent=to_device(parent, device), recipe=train_spec(cfg, parent),
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
    metrics["parent_test_accuracy"] = caches.parent_test_accuracy(parent, test_all, cfg.data.test_size)
    metrics["parent_val_accuracy"] = accuracy(parent, run_data.val.x, run_data.val.y) if cfg.data.val_size else math.nan
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
                Path(tmp, "config.yaml").write_text(mask(OmegaConf.to_yaml(cfg, resolve=True)))
                network = Path(tmp) / "best_network.pt"
                save_network(best, network, extra={"method": method.name, **method.labels(), "seed": int(cfg.seed),
                                                   "test_accuracy": metrics["best_test_accuracy"]})
                try:
                    tracker.log_artifacts(Path(tmp))
                    if cfg.tracking.log_model:
                        version_tags = {"method": method.name, **method.labels(), "seed": str(cfg.seed),
                                        "test_accuracy": f"{metrics['best_test_accuracy']:.4f}"}
                        example = test.x[:5].contiguous()
                        requirements = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
                        tracker.log_model(network, example.numpy(), logits(best, example).numpy(), requirements,
                                          cfg.tracking.register_as, version_tags)
                    tracker.log_datasets(_dataset_inputs(cfg, caches, run_data, test))
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
