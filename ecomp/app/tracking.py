"""MLflow tracking: one run per compression run (EComp or a baseline), metrics buffered and sent in batches.

The tracker calls the store (:mod:`ecomp.app.store`: opening it, its defaults, finding a config's
runs), never the reverse. MLflow is imported by the store, this module, the tracking helper
process and the experiment scripts, each when it is first needed.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ecomp.app.store import client_for, open_run, store_error
from ecomp.errors import TrackingError

log = logging.getLogger(__name__)

# The logged model's code (MLflow's models from code): passed by path, never imported here.
NETWORK_MODEL = Path(__file__).with_name("network_model.py")
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call

def model_signature(shape: tuple[int, ...], classes: int):
    """The logged model's signature: a batch of float32 inputs of ``shape`` (``-1`` rows) in, each
    row's class probabilities (``probabilities``, ``(-1, classes)``) out. MLflow fixes a tensor's
    rank: an image-shaped input is sent as ``inputs`` of ``N x C x H x W``, or as flat rows in a
    one-column DataFrame, which MLflow reshapes to the signature's shape (README, serving)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
                          Schema([TensorSpec(np.dtype(np.float32), (-1, classes), "probabilities")]))


def _save_portable_pyfunc(path: str, mlflow_model, **kwargs) -> None:
    """``mlflow.pyfunc.save_model``, then an MLmodel that names no file of the logging machine:
    MLflow records the model code's absolute path (``model_code_path``) and each artifact's source
    (``uri``), though loading reads only the code file's name and the artifacts' ``path`` inside
    the model."""
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)
    conf = mlflow_model.flavors["python_function"]
    conf["model_code_path"] = Path(conf["model_code_path"]).name
    for artifact in conf.get("artifacts", {}).values():
        artifact.pop("uri", None)
    mlflow_model.save(str(Path(path) / "MLmodel"))


# What Model.log asks of a flavour: a ``save_model``, and a name for the logged model's flavour.
PORTABLE_PYFUNC = SimpleNamespace(__name__="mlflow.pyfunc", save_model=_save_portable_pyfunc)


def _ensure_registered_model(client, name: str) -> None:
    """Create registered model ``name`` unless it exists (parallel jobs may race to create it)."""
    from mlflow.exceptions import MlflowException

    for _ in range(5):
        try:
            client.get_registered_model(name)
            return
        except MlflowException:
            try:
                client.create_registered_model(name, description="Networks compressed by EComp (and baselines)")
                return
            except MlflowException:                 # created by another job in between
                time.sleep(0.2)
    raise TrackingError(f"tracking.register_as={name!r}: cannot be created in the Model Registry")


UNIQUE_RETRIES = 5
# What SQLite and PostgreSQL say when an insert loses a race on a unique key.
UNIQUE_MESSAGES = ("UNIQUE constraint failed", "duplicate key value violates unique constraint")


def unique_violation(exc: Exception) -> bool:
    return any(m in str(exc) for m in UNIQUE_MESSAGES)


def keep_locally(error: TrackingError, files: Path, metrics: dict[str, float],
                 history: list[dict[str, float]]) -> TrackingError:
    """The store failed: copy the run's ``files`` (network, config) and write its ``metrics.json``
    into the Hydra run folder (a fresh temporary folder outside Hydra); ``error`` naming that folder."""
    import json
    import shutil
    import tempfile

    try:
        from hydra.core.hydra_config import HydraConfig

        folder = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
        folder = folder or Path(tempfile.mkdtemp(prefix="ecomp-run-"))
        folder.mkdir(parents=True, exist_ok=True)
        for f in Path(files).iterdir():
            shutil.copy2(f, folder / f.name)
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "history": history}, indent=1))
    except OSError as exc:
        return TrackingError(f"{error}; the run's results could not be saved locally either ({exc})")
    return TrackingError(f"{error}; the run's network and metrics are saved in {folder}")


class RunTracker:
    """Context manager around one MLflow run, its calls to the store made on the caller's thread.

    :meth:`open` opens the store, looks for this config's runs, then creates the run (:meth:`create`);
    if it finds a FINISHED run it raises :class:`ecomp.app.store.SkipRun`. A fresh
    ``run.py`` process does not use this class itself: :class:`ecomp.app.tracker_process.TrackerProcess`
    runs one in a helper process, beside the computation.

    Metrics are buffered and sent with ``log_batch`` every ``flush_every`` generations
    and at the end. Leaving the ``with`` block by an exception flushes what was logged,
    records the error, and ends the run FAILED (KILLED on Ctrl-C / SIGTERM); it is never
    left RUNNING while the store can be written.

    A call to the store that fails raises :class:`TrackingError` (one line naming the URI)
    and marks the tracker ``broken``: later calls raise that error without trying the
    store again, except a flush between generations, which warns once and lets the run
    go on (its results are then kept locally, :func:`keep_locally`).
    """

    def __init__(self, run_name: str, tags: dict[str, str], params: dict[str, Any], flush_every: int = 25):
        self.run_name = run_name
        self.tags = tags
        self.params = params
        self.flush_every = flush_every
        self.buffer: list[tuple[str, float, int, int]] = []     # (key, value, timestamp ms, step)
        self.uri: str | None = None
        self.client = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.artifact_uri: str | None = None
        self.broken: TrackingError | None = None   # the first failed call to the store
        self.seconds = 0.0   # time spent in MLflow calls on this thread

    # -- opening ------------------------------------------------------------------------------
    def open(self, store, config_hash: str, sweep: str | None) -> None:
        """Open the store (a :class:`ecomp.app.spec.StoreSpec`), close this config's stale runs, stop if it has a FINISHED one, then
        :meth:`create` the run (:func:`ecomp.app.store.open_run`)."""
        open_run(store, self, config_hash, sweep)

    def create(self, uri: str, experiment_id: str) -> None:
        """Create the run with its tags and params (called by the opener)."""
        from mlflow.entities import Param

        self.uri, self.client, self.experiment_id = uri, client_for(uri), experiment_id
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
        params = [Param(k, str(v)[:6000]) for k, v in sorted(self.params.items())]
        for s in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[s:s + 100])

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``, a call to the store: its failure becomes :class:`TrackingError`."""
        if self.broken is not None:
            raise self.broken
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the client raises, the store failed
            self.broken = store_error(self.uri, what, exc)
            raise self.broken from None

    @property
    def ready(self) -> bool:
        """The run exists (always, once :meth:`open` has returned; see :class:`TrackerProcess`)."""
        return True

    def wait(self) -> None:
        """Nothing to wait for: the store is called on this thread."""

    def __enter__(self) -> "RunTracker":
        return self

    # -- logging ------------------------------------------------------------------------------
    def log_generation(self, step: int, metrics: dict[str, float]) -> None:
        """One generation's (or any step's) metrics, buffered; sent every ``flush_every`` steps."""
        ts = int(time.time() * 1000)
        self.buffer.extend((k, v, ts, step) for k, v in metrics.items())
        if self.ready and (step + 1) % self.flush_every == 0:
            self.flush_between()

    def flush_between(self) -> None:
        """A flush between generations: a failed one warns and the run goes on."""
        if self.broken is None:
            try:
                self.flush()
            except TrackingError as exc:
                log.warning("%s; the run goes on, its results will be kept locally", exc)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.buffer.extend((k, float(v), ts, 0) for k, v in metrics.items())

    def flush(self) -> None:
        from mlflow.entities import Metric

        self.wait()
        t = time.perf_counter()
        while self.buffer:
            chunk, self.buffer = self.buffer[:MAX_METRICS_PER_BATCH], self.buffer[MAX_METRICS_PER_BATCH:]
            self._call("sending the run's metrics", self.client.log_batch, self.run_id,
                       metrics=[Metric(*m) for m in chunk])
        self.seconds += time.perf_counter() - t

    def log_datasets(self, splits: dict[str, tuple[str, str, int, str]]) -> None:
        """Record what the run saw as MLflow dataset inputs (the runs table's Dataset column):
        ``context -> (name, digest, rows, source)``, e.g. ``"training" -> ("fashion_mnist-subset",
        "3f2a...", 10000, "<root>")``."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        self.wait()
        t = time.perf_counter()
        inputs = [DatasetInput(Dataset(name=name, digest=digest, source_type="local",
                                       source=json.dumps({"uri": source}), profile=json.dumps({"num_rows": rows})),
                               tags=[InputTag("mlflow.data.context", context)])
                  for context, (name, digest, rows, source) in splits.items()]
        def send() -> None:
            for attempt in range(UNIQUE_RETRIES):
                try:
                    self.client.log_inputs(self.run_id, datasets=inputs)
                    break
                except MlflowException as exc:
                    # Parallel jobs on the same data (one seed, several scenarios) log the same datasets:
                    # MLflow looks a dataset up, then inserts it, so two jobs at once can both insert. The
                    # loser's transaction is rolled back whole, and a retry finds the winner's dataset.
                    if attempt == UNIQUE_RETRIES - 1 or not unique_violation(exc):
                        raise
                    time.sleep(0.05 * (attempt + 1))

        self._call("recording the run's datasets", send)
        self.seconds += time.perf_counter() - t

    def log_model(self, network: Path, shape: tuple[int, ...], classes: int, requirements: list[str], name: str,
                  tags: dict[str, str], params: dict[str, str], register_as: str | None = None) -> str:
        """Log the network saved at ``network`` (a ``best_network.pt``) as an MLflow Model named
        ``name`` with ``tags`` and ``params``: a pyfunc model from code
        (:mod:`ecomp.app.network_model`, nothing pickled) whose artifact is that file, with the pip
        ``requirements`` it is served with and the signature :func:`model_signature` of ``shape``
        (one input: an image ``(C, H, W)`` or a flat row) and ``classes``; register it as a new
        version of ``register_as`` when given, the version tagged with ``tags`` and ``params`` (a
        version has no params). Returns its URI."""
        import mlflow
        from mlflow.models import Model

        self.wait()
        t = time.perf_counter()
        # A signature, and no input example: MLflow checks an example by loading the model, which
        # imports torch into the tracking process at the end of the run (2.3 s of the user's wait).
        # The model's loading, predictions and serving are tested instead (tests/test_serving.py).
        signature = model_signature(shape, classes)
        # The model is filed in the fluent client's experiment: this run's, not the store's
        # Default one (experiment 0).
        def send():
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(experiment_id=self.experiment_id)
            with warnings.catch_warnings():     # MLflow's advice for models unlike this one
                warnings.filterwarnings("ignore", message=".*An input example was not provided")
                return Model.log(None, name=name, flavor=PORTABLE_PYFUNC, run_id=self.run_id, tags=tags, params=params,
                                 python_model=str(NETWORK_MODEL), artifacts={"network": str(network),
                                                                                "architecture": str(network) + ".json"},
                                 signature=signature, pip_requirements=requirements)

        info = self._call("logging the run's model", send)
        if register_as:
            def register() -> None:
                _ensure_registered_model(self.client, register_as)
                self.client.create_model_version(register_as, info.model_uri, run_id=self.run_id,
                                                 tags={**tags, **params})

            self._call(f"registering the model as {register_as!r}", register)
        self.seconds += time.perf_counter() - t
        return info.model_uri

    def log_artifacts(self, folder: Path) -> None:
        self.wait()
        t = time.perf_counter()
        self._call(f"writing the run's artifacts to {self.artifact_uri}", self.client.log_artifacts,
                   self.run_id, str(folder))
        self.seconds += time.perf_counter() - t

    def __exit__(self, exc_type, exc, tb) -> bool:
        error = None if exc_type is None else f"{exc_type.__name__}: {exc}"
        self.close(error, killed=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))
        return False

    def close(self, error: str | None = None, killed: bool = False) -> None:
        """End the run: FINISHED, or FAILED with ``error`` (KILLED when ``killed``: Ctrl-C, SIGTERM);
        a store that failed on the way fails it too. Raises that store error when the run itself
        succeeded, so that its results are kept locally."""
        try:
            self.wait()
        except BaseException as open_exc:  # noqa: BLE001 - no run was created: nothing to close
            if error is None:
                raise
            log.debug("the run was not opened: %s", open_exc)
            return
        if self.run_id is None:
            return
        status = "FINISHED"
        if self.broken is None:
            try:
                self.flush()
            except TrackingError:   # the run must still be closed
                pass
        failed = error is not None
        if self.broken is not None:
            status, error = "FAILED", error or str(self.broken)
        if failed:
            status = "KILLED" if killed else "FAILED"
        if error is not None:
            try:
                self.client.set_tag(self.run_id, "error", error[:5000])
            except Exception:  # noqa: BLE001
                pass
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as close_exc:  # noqa: BLE001 - the store is gone: the run stays RUNNING there
            log.debug("could not end run %s %s: %s", self.run_id, status, close_exc)
            if not failed:
                raise store_error(self.uri, f"ending run {self.run_id} {status}", close_exc) from None
        if not failed and self.broken is not None:
            raise self.broken
