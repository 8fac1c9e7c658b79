"""The GPU check, in one command, from a bare copy of the working tree on the lent GPU machine.

    python3 benchmarks/gpu_check.py OUT_DIR                 # there: device=cuda (about 4-6 minutes)
    python3 benchmarks/gpu_check.py OUT_DIR --device cpu \\
        --run-args parent.hidden=[32,32] ... --scaling-args --factors population --gens 1
                                                            # here, the same steps on the CPU (tests/test_gpu_check.py)

That machine has Python 3.12, torch and ``benchmarks/gpu_machine.txt``, but neither Hydra nor
MLflow, no ``data/`` and no network. The steps, each timed, their output in ``OUT_DIR/log.txt``:

1. set-up: what it lacks is installed from ``.whl/`` (made here by ``benchmarks/gpu_wheels.py``)
   into a temporary folder put on ``PYTHONPATH``; FashionMNIST is unpacked from
   ``.whl/fashion-mnist`` (or read from ``data/``) into a temporary data root;
2. ``tests/test_cuda.py`` and ``tests/test_padded.py``;
3. ``bench_scaling.py --quick`` on the device (``OUT_DIR/scaling``);
4. per parent kind (``--parents``, default ``mlp,cnn,resnet``: the paper's MLP, LeNet-5, ResNet-8), the default
   run, ``run.py device=cuda parent=<kind>``, twice into a temporary SQLite store, each timed as a
   whole process: seed 0 trains and caches the parent, seed 1 is a run as a grid runs it (parent
   cached); read back from the store: test accuracy, ``run_seconds``, ``seconds_per_generation``
   and ``gpu_peak_mib``; beside them the CPU's ``seconds_per_generation`` of the same kind from
   ``--cpu-reference`` (a ``summary.json`` of this check run with ``--device cpu`` on the CPU
   machine: ``benchmarks/cpu_reference.json``) and the ratio CPU/GPU;
5. the report (``experiments/figures.py``) of the MLP runs into ``OUT_DIR/figures``.

The CUDA tests of step 2 hold the GPU's MLP, CNN and ResNet forward passes to their CPU oracles.
Writes ``OUT_DIR/summary.json`` and ``OUT_DIR/summary.md`` (with the 70-run grid estimate per kind:
70 whole processes of the second kind, one job at a time) and exits 1 if any step failed. Nothing
is written into the working tree (bytecode off, every store, Hydra and data folder temporary).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
NEEDED = ("hydra", "omegaconf", "mlflow", "sqlalchemy")     # the modules the machine lacks
GRID_RUNS = 70                                              # 7 scenarios x 10 seeds
CPU_REFERENCE = ROOT / "benchmarks" / "cpu_reference.json"


class Check:
    """The steps' record: each step's command, seconds and exit status, its output in one log."""

    def __init__(self, out: Path, env: dict[str, str]):
        self.out, self.env, self.steps = out, env, []
        self.log = open(out / "log.txt", "w")

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, name: str, cmd: list[str], timeout: float) -> bool:
        self.note(f"\n=== {name}: {' '.join(cmd)}")
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
            rc, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, text = 124, f"{exc.stdout or ''}{exc.stderr or ''}\n(stopped after {timeout:.0f} s)"
            text = text if isinstance(text, str) else text.decode(errors="replace")
        seconds = time.perf_counter() - t
        self.log.write(text)
        self.steps.append({"step": name, "seconds": round(seconds, 2), "rc": rc})
        self.note(f"=== {name}: exit {rc} after {seconds:.1f} s")
        return rc == 0


def set_up(wheels: Path, tmp: Path) -> tuple[dict[str, str], str]:
    """The environment of every step: the missing packages installed from ``wheels``, the
    checkout importable, no bytecode written. Returns it and where the packages came from."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"}
    paths = [str(ROOT)]
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    source = "installed"
    if missing:
        found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
        if not found:
            raise SystemExit(f"gpu_check: {', '.join(missing)} not installed and no wheels in {wheels}: "
                             "run `python benchmarks/gpu_wheels.py` where pip reaches PyPI, and carry .whl")
        site = tmp / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--target", str(site), *map(str, found)], check=True)
        paths.insert(0, str(site))
        sys.path.insert(0, str(site))            # this process reads the store back at the end
        source = f"{len(found)} wheels from {wheels}"
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env, source


def data_root(wheels: Path, tmp: Path) -> tuple[Path | None, str]:
    """A FashionMNIST root: this checkout's ``data/``, else one unpacked from ``wheels/fashion-mnist``
    or Debian's package; None (the runs then use scikit-learn's digits) when there is none."""
    sys.path.insert(0, str(ROOT))
    from ecomp.nets.datasets import DEBIAN_DIR, RAW_FILES, prepare, raw_dir

    if all((raw_dir(ROOT / "data") / n).exists() for n in RAW_FILES):
        return ROOT / "data", "FashionMNIST (data/)"
    for source in (wheels / "fashion-mnist", DEBIAN_DIR):
        if all((source / f"{n}.gz").exists() for n in RAW_FILES):
            return prepare(tmp / "data", debian_dir=source), f"FashionMNIST (from {source})"
    return None, "digits (no FashionMNIST here)"


def read_runs(uri: str) -> list[dict]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("ecomp")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []
    keys = ("best_test_accuracy", "best_compression", "parent_test_accuracy", "run_seconds",
            "seconds_per_generation", "gpu_peak_mib", "tracking_seconds")
    return [{"run": r.info.run_name, "seed": r.data.tags.get("seed"), "status": r.info.status,
             "parent": r.data.params.get("parent.kind", "mlp"), **{k: r.data.metrics.get(k) for k in keys}} for r in runs]


def cpu_seconds_per_generation(path: Path) -> dict[str, float]:
    """The parent-cached run's ``seconds_per_generation`` per kind in a CPU check's ``summary.json``."""
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    return {r["parent"]: r["seconds_per_generation"] for r in summary.get("runs", [])
            if r.get("seed") == "1" and r.get("seconds_per_generation")}


def device_info(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
            "cpus": os.cpu_count()}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: --device cuda but torch.cuda.is_available() is False")
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1))
    return info


def summary_md(s: dict) -> str:
    lines = [f"# GPU check, {s['date']}", "",
             f"{s['info'].get('gpu', 'no GPU')} ({s['info'].get('gpu_memory_gib', '-')} GiB), torch {s['info']['torch']}, "
             f"Python {s['info']['python']}, {s['info']['cpus']} CPUs; packages: {s['packages']}; data: {s['data']}", "",
             "| step | seconds | exit |", "| --- | ---: | ---: |"]
    lines += [f"| {st['step']} | {st['seconds']:.1f} | {st['rc']} |" for st in s["steps"]]
    lines += ["", "| parent | run | whole process s | run_seconds | s/generation | CPU s/generation | CPU/this |"
                  " GPU peak MiB | test acc | size |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in s["runs"]:
        def f(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "-"
        lines.append(f"| {r['parent']} | {r['run']} | {f('process_seconds', '.1f')} | {f('run_seconds', '.1f')} | "
                     f"{f('seconds_per_generation', '.3f')} | {f('cpu_seconds_per_generation', '.3f')} | "
                     f"{f('cpu_ratio', '.1f')} | {f('gpu_peak_mib', '.0f')} | "
                     f"{f('best_test_accuracy', '.4f')} | {f('best_compression', '.3f')} |")
    for kind, seconds in s.get("grid_estimate_s", {}).items():
        lines += ["", f"70-run grid of parent={kind}, one job at a time: about {seconds / 60:.1f} min "
                      f"(70 x the parent-cached run's whole process)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for log.txt, summary.json/.md, scaling/ and figures/")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--wheels", type=Path, default=WHEELS)
    ap.add_argument("--parents", default="mlp,cnn,resnet", help="comma-separated parent kinds, each run twice")
    ap.add_argument("--cpu-reference", type=Path, default=CPU_REFERENCE,
                    help="a CPU check's summary.json, for the ratio CPU/this device")
    ap.add_argument("--run-args", nargs="*", default=[], help="extra run.py overrides (tiny sizes for a CPU check)")
    ap.add_argument("--scaling-args", nargs=argparse.REMAINDER, default=[],
                    help="extra bench_scaling.py options (last on the line)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ecomp-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        env, packages = set_up(a.wheels, tmp)
        info = device_info(a.device)
        root, data = data_root(a.wheels, tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        env["MLFLOW_TRACKING_URI"] = uri                          # nothing falls back to ./mlflow.db
        check = Check(a.out, env)
        check.note(f"gpu_check: {json.dumps(info)}; packages: {packages}; data: {data}")
        py = [sys.executable]
        check.run("tests", [*py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
                            "tests/test_padded.py"], timeout=180)
        check.run("bench_scaling", [*py, "benchmarks/bench_scaling.py", "--device", a.device, "--threads", "0",
                                    "--quick", "--out", str(a.out / "scaling"), *a.scaling_args], timeout=180)
        common = [f"device={a.device}", f"tracking.uri={uri}", f"parent.cache_dir={tmp / 'parents'}", "progress=false",
                  *([f"data.root={root}"] if root else ["data=digits"]), *a.run_args]
        kinds = a.parents.split(",")
        process_seconds: dict[tuple[str, str], float | None] = {}
        for kind in kinds:
            for seed in (0, 1):
                t = time.perf_counter()
                ok = check.run(f"run {kind} seed {seed}", [*py, "run.py", f"parent={kind}", f"seed={seed}", *common,
                                                           f"hydra.run.dir={tmp / f'run-{kind}{seed}'}"], timeout=240)
                process_seconds[kind, str(seed)] = time.perf_counter() - t if ok else None
        check.run("figures", [*py, "experiments/figures.py", f"tracking.uri={uri}", f"output_dir={a.out / 'figures'}",
                              f"report.parent={kinds[0]}", "grid.scenarios=[\"121\"]", "grid.seeds=[0,1]",
                              "omit_from_figures=[]", "log_summary_run=false"], timeout=120)
        runs, cpu = read_runs(uri), cpu_seconds_per_generation(a.cpu_reference)
        for r in runs:
            r["process_seconds"] = process_seconds.get((r["parent"], r["seed"]))
            r["cpu_seconds_per_generation"] = cpu.get(r["parent"])
            if r["cpu_seconds_per_generation"] and r.get("seconds_per_generation"):
                r["cpu_ratio"] = r["cpu_seconds_per_generation"] / r["seconds_per_generation"]
        summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "info": info, "packages": packages,
                   "data": data, "steps": check.steps, "runs": runs, "whole_check_s": time.perf_counter() - t0,
                   "grid_estimate_s": {kind: GRID_RUNS * process_seconds[kind, "1"] for kind in kinds
                                       if process_seconds.get((kind, "1"))}}     # a grid run: the parent cached
        (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
        (a.out / "summary.md").write_text(summary_md(summary))
        check.note("\n" + summary_md(summary))
    failed = [s["step"] for s in check.steps if s["rc"]]
    if failed or len(runs) != 2 * len(kinds):
        raise SystemExit(f"gpu_check: failed: {', '.join(failed) or 'the runs are not in the store'}")


if __name__ == "__main__":
    main()
