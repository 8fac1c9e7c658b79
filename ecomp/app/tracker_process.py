"""A run's MLflow tracking in a helper process, beside the computation.

Importing MLflow, opening the store and creating the run take seconds of Python in a fresh
process. On a thread of the computing process they hold its interpreter lock and slow every
generation (``benchmarks/bench_overhead.py``: the run's own ``run_seconds`` 1.29x the untracked
run's). :class:`TrackerProcess` has the interface of :class:`ecomp.app.tracking.RunTracker`, and a
helper process (``python -m ecomp.app.tracker_process``, at the lowest priority until the run
waits for it) runs a real ``RunTracker`` on its side. The run never imports MLflow. One helper
serves all the runs of its process, one after the other (a sweep's worker: MLflow imported and
the store opened once), and exits when that process does.

The two talk by pickled messages over the helper's stdin and a pipe of its own (its prints and
log lines go to this process's stdout): ``(verb, args)``. ``open``, ``flush`` and ``close`` are
answered, in order, with
``("ok", value)``, ``("skip", run_id, metrics)`` or ``("error", exception)``; the rest are not: a
failed upload marks the child's tracker broken, and the next answer carries that error, so the
caller sees what ``RunTracker`` would raise, one step later. Generations are buffered here and sent
every ``flush_every`` steps once the run exists, so the pipe never fills while the child is busy.
If the computing process dies, the helper reads the end of its input and ends the run KILLED.
Only errors of EComp's own types travel as they are; any other becomes a one-line
:class:`ecomp.errors.TrackingError`, so that unpickling it here never imports MLflow.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import pickle
import select
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ecomp.errors import TrackingError

HELPER_NICE = 19      # the lowest: the helper takes the cores' idle time while the run computes
ANSWERED = {"open", "flush", "close"}


def _portable(exc: BaseException, uri: str | None, what: str) -> BaseException:
    """``exc`` if this side can unpickle it without MLflow, else a one-line TrackingError."""
    if type(exc).__module__.split(".")[0] == "ecomp":
        return exc
    from ecomp.app.store import store_error

    return store_error(uri, what, exc)


class TrackerProcess:
    """:class:`ecomp.app.tracking.RunTracker`'s interface; the work is done by a child process."""

    def __init__(self, run_name: str, tags: dict[str, str], params: dict[str, Any], flush_every: int = 25):
        self.run_name, self.tags, self.params, self.flush_every = run_name, tags, params, flush_every
        self.buffer: list[tuple[str, float, int, int]] = []      # (key, value, timestamp ms, step)
        self.run_id: str | None = None
        self.broken: TrackingError | None = None
        self.seconds = 0.0            # time this process waited for the child
        self._proc: subprocess.Popen | None = None
        self._due: list[str] = []     # the answered requests sent, oldest first
        self._opened = False

    # -- the pipe ------------------------------------------------------------------------------
    def _send(self, verb: str, *args) -> None:
        if self._proc.stdin.closed:
            return
        try:
            pickle.dump((verb, args), self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._proc.stdin.close()   # the child is gone: its answer (EOF) says so
        if verb in ANSWERED:
            self._due.append(verb)

    def _receive(self) -> Any:
        """The oldest due answer: its value, or raise what it carries."""
        verb = self._due.pop(0)
        try:
            answer = pickle.load(self._answers)
        except (EOFError, pickle.UnpicklingError, OSError):
            self._proc.wait()
            self.broken = self.broken or TrackingError(
                f"the tracking process ended (exit {self._proc.returncode}) before it answered {verb!r}; "
                "its output above says why")
            raise self.broken from None
        if answer[0] == "ok":
            if verb == "open":
                self._opened, self.run_id = True, answer[1]
            return answer[1]
        if answer[0] == "skip":
            from ecomp.app.store import SkipRun

            self._opened = True
            raise SkipRun(SimpleNamespace(info=SimpleNamespace(run_id=answer[1]), data=SimpleNamespace(metrics=answer[2])))
        if verb == "open":
            self._opened = True
        if isinstance(answer[1], TrackingError):
            self.broken = self.broken or answer[1]
        raise answer[1]

    # -- RunTracker's interface -----------------------------------------------------------------
    def open(self, store, config_hash: str, sweep: str | None) -> None:
        """Have the helper open the store (a :class:`ecomp.app.spec.StoreSpec`) and create the run.
        The spec travels as a plain namespace: unpickling the dataclass would import its module,
        and with it torch, into the helper (3.6 s before it could open the store)."""
        global _USED
        self._proc, self._answers = helper()
        _USED = True
        self._send("open", SimpleNamespace(**dataclasses.asdict(store)), config_hash, sweep, self.run_name, self.tags,
                   self.params, self.flush_every)

    @property
    def ready(self) -> bool:
        """The run exists (its opening's error or :class:`SkipRun`, if any, is raised here)."""
        if not self._opened and self._due and select.select([self._answers], [], [], 0)[0]:
            self._receive()
        return self._opened

    def wait(self) -> None:
        """Block until every answer due has come (or raise the first error among them)."""
        t = time.perf_counter()
        if self._due:
            try:      # the run waits for it now: at a low priority, a sweep's other jobs would starve it
                os.setpriority(os.PRIO_PROCESS, self._proc.pid, os.getpriority(os.PRIO_PROCESS, 0))
            except OSError:
                pass
        first: BaseException | None = None
        while self._due:              # every answer is read, so that none is left for the next run
            try:
                self._receive()
            except BaseException as exc:  # noqa: BLE001 - raised below, once all are read
                first = first or exc
        self.seconds += time.perf_counter() - t
        if first is not None:
            raise first

    def __enter__(self) -> "TrackerProcess":
        return self

    def log_generation(self, step: int, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.buffer.extend((k, v, ts, step) for k, v in metrics.items())
        if self.ready and (step + 1) % self.flush_every == 0:
            self._send("entries", self.buffer)
            self.buffer = []

    def log_metrics(self, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.buffer.extend((k, float(v), ts, 0) for k, v in metrics.items())

    def log_artifacts(self, folder: Path) -> None:
        self._send("call", "log_artifacts", (str(folder),), {})

    def log_model(self, network: Path, shape: tuple[int, ...], classes: int, requirements: list[str], name: str,
                  tags: dict[str, str], params: dict[str, str], register_as: str | None = None) -> None:
        self._send("call", "log_model", (str(network), tuple(shape), int(classes), requirements, name, tags, params,
                                         register_as), {})

    def log_datasets(self, splits: dict[str, tuple[str, str, int, str]]) -> None:
        self._send("call", "log_datasets", (splits,), {})

    def flush(self) -> None:
        """Send what is buffered and wait until the child has stored everything sent so far."""
        self.wait()
        self._send("entries", self.buffer)
        self.buffer = []
        self._send("flush")
        self.wait()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._proc is None:
            return False
        error = None if exc_type is None else f"{exc_type.__name__}: {exc}"
        killed = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if self.buffer and self.broken is None:
            self._send("entries", self.buffer)
        self.buffer = []
        self._send("close", error, killed)
        try:
            self.wait()
        except BaseException:  # noqa: BLE001
            if exc_type is None:
                raise
        return False


_HELPER: tuple[subprocess.Popen, Any] | None = None
_USED = False         # whether this process's helper has been sent a run
UNTRACKED = ("tracking.enabled=false", "tracking.enabled=False", "tracking.enabled=0")


def prestart(argv: list[str]) -> None:
    """Start this process's helper now, at the entry point, before the run imports torch and
    composes its config: the helper imports MLflow meanwhile, on the core the run's start-up
    leaves idle, instead of after it (about 4 s of a tracked run's wait). Only for a single run
    that is not told ``tracking.enabled=false`` (a sweep's jobs start their own helpers); a run
    that turns out untracked, or fails its checks, ends, and its helper with it (stopped at exit)."""
    multirun = any(a in ("-m", "--multirun") or a.endswith("hydra.mode=MULTIRUN") for a in argv)
    if not multirun and not any(a.replace(" ", "") in UNTRACKED for a in argv):
        helper()
        atexit.register(_stop_if_unused)


def _stop_if_unused() -> None:
    """At exit, a prestarted helper that was never sent a run is only importing MLflow: stop it
    (SIGKILL: it ignores SIGTERM and has nothing to close), so that whoever reads this process's
    output, which the helper shares, is not kept waiting for that import after a refusal."""
    if _HELPER is not None and not _USED and _HELPER[0].poll() is None:
        _HELPER[0].kill()
        _HELPER[0].wait()


def helper() -> tuple[subprocess.Popen, Any]:
    """This process's helper and the pipe of its answers, started on first use and kept for the
    next runs (a sweep's worker imports MLflow and opens the store once, not once per job). It
    exits when this process does: its input ends."""
    global _HELPER
    if _HELPER is None or _HELPER[0].poll() is not None:
        import ecomp

        env = dict(os.environ)
        src = str(Path(ecomp.__file__).resolve().parents[1])         # this very ecomp, in the child too
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        answers, theirs = os.pipe()          # the child's prints and logs go where this process's go
        proc = subprocess.Popen([sys.executable, "-m", "ecomp.app.tracker_process", str(theirs)], env=env,
                                stdin=subprocess.PIPE, pass_fds=(theirs,))
        os.close(theirs)
        _HELPER = (proc, os.fdopen(answers, "rb"))
    return _HELPER


# --- the child --------------------------------------------------------------------------------
class Orphaned(Exception):
    """The computing process is gone: nobody reads the answers any more."""


class Helper:
    """The child's side: a real RunTracker per run, driven by the computing process's messages."""

    def __init__(self, out):
        self.out = out
        self.tracker = None                      # the run being tracked, None between runs
        self.error: BaseException | None = None  # the first failure of an unanswered request

    def answer(self, *msg) -> None:
        try:
            pickle.dump(msg, self.out, protocol=pickle.HIGHEST_PROTOCOL)
            self.out.flush()
        except OSError as exc:                   # BrokenPipeError
            raise Orphaned from exc

    def failure(self, exc: BaseException, what: str) -> BaseException:
        return _portable(exc, self.tracker.uri if self.tracker else None, what)

    def answer_result(self, fn, what: str) -> None:
        """Answer ``fn()``'s outcome: ``ok`` or its error, made portable."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - handed to the computing process
            self.answer("error", self.failure(exc, what))
            return
        self.answer("ok", None)

    def open(self, store, chash, sweep, run_name, tags, params, flush_every) -> None:
        from ecomp.app.store import SkipRun
        from ecomp.app.tracking import RunTracker

        _lowest_priority()                 # again: the last run's wait may have raised it
        # MLflow names a logged model's source ("Logged from") after the process's main file:
        # the run's script, not this helper.
        sys.argv[0] = tags.get("mlflow.source.name") or sys.argv[0]
        tracker, self.error = RunTracker(run_name, tags, params, flush_every), None
        try:
            tracker.open(store, chash, sweep)
        except SkipRun as skip:
            self.answer("skip", skip.run.info.run_id, dict(skip.run.data.metrics))
            return
        except Exception as exc:  # noqa: BLE001 - handed to the computing process
            self.answer("error", self.failure(exc, "opening the run"))
            return
        self.tracker = tracker
        self.answer("ok", tracker.run_id)

    def handle(self, verb: str, args: tuple) -> None:
        tracker = self.tracker
        if verb == "open":
            self.open(*args)
        elif tracker is None:             # not opened: nothing to log; still answer what is due
            if verb in ANSWERED:
                self.answer("ok", None)
        elif verb == "entries":
            tracker.buffer.extend(args[0])
            tracker.flush_between()
        elif verb == "call":
            name, call_args, kwargs = args
            if self.error is None and tracker.broken is None:
                try:
                    getattr(tracker, name)(*call_args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - answered at the next flush
                    self.error = tracker.broken or self.failure(exc, name.replace("_", " "))
        elif verb == "flush":
            def flush() -> None:
                if self.error is not None:
                    raise self.error
                tracker.flush()

            self.answer_result(flush, "flushing the run")
        elif verb == "close":
            message, killed = args
            self.tracker = None           # closed, whatever the answer
            self.answer_result(lambda: tracker.close(message or (str(self.error) if self.error else None), killed),
                               "ending the run")

    def serve(self, inp) -> None:
        """Until the computing process's input ends; then a run it left open is ended KILLED."""
        try:
            while True:
                try:
                    verb, args = pickle.load(inp)
                except (EOFError, pickle.UnpicklingError):      # the computing process is gone
                    break
                self.handle(verb, args)
        except Orphaned:
            pass
        if self.tracker is not None:
            try:      # nobody waits for this process now: its priority back, where that is allowed
                os.setpriority(os.PRIO_PROCESS, 0, 0)
            except OSError:
                pass
            self.tracker.close("the run's process ended without closing its run: a killed process", killed=True)


def _lowest_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, HELPER_NICE)
    except OSError:
        pass


def main() -> None:
    import logging
    import signal

    # Ctrl-C and SIGTERM reach the whole process group: the computing process closes the run
    # (KILLED), or, if it dies, the end of its input does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _lowest_priority()
    # as the run's own log lines (Hydra's format, on stdout)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    # What every run needs, imported now, while the computing process starts up (MLflow's
    # settings first: they are read at its import)
    from ecomp.app.store import mlflow_defaults

    mlflow_defaults()
    import mlflow.pyfunc  # noqa: F401

    from ecomp.app.tracking import RunTracker  # noqa: F401
    Helper(open(int(sys.argv[1]), "wb")).serve(sys.stdin.buffer)   # noqa: SIM115 - ended by os._exit
    sys.stdout.flush()
    os._exit(0)              # no teardown of MLflow, SQLAlchemy and pandas: nothing waits for it


if __name__ == "__main__":
    main()
