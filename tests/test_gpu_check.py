"""``benchmarks/gpu_check.py`` as the lent GPU machine runs it, here on the CPU at tiny sizes.

The machine is imitated: a Python with no packages of its own, given only those of
``benchmarks/gpu_machine.txt`` that this checkout has installed (linked into one folder on
``PYTHONPATH``), and everything else as a folder of wheels made from this checkout's installed
distributions, one per name that ``benchmarks/gpu_wheels.py`` would fetch. So the check must set
itself up exactly as there (``pip install --target`` from the wheels), and a package missing from
that list fails it here. What cannot be imitated: CUDA (``tests/test_cuda.py`` skips) and the
Python 3.12 builds of the compiled wheels.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, TINY

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_wheels  # noqa: E402


def installed_files(name: str) -> tuple[Path, list[Path]]:
    """Where a distribution is installed and its files there (not its scripts or bytecode)."""
    dist = md.distribution(name)
    base = Path(dist.locate_file(""))
    return base, [f for f in dist.files or [] if f.parts[0] != ".." and "__pycache__" not in f.parts]


def wheel_of(name: str, dest: Path) -> Path:
    """A wheel of an installed distribution: its files as installed, with its ``.dist-info``."""
    dist = md.distribution(name)
    base, files = installed_files(name)
    stem = f"{dist.metadata['Name'].replace('-', '_').replace('.', '_')}-{dist.version}"
    path = dest / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f in files:
            if (base / f).is_file():
                z.write(base / f, f.as_posix())
    return path


def machine_site(dest: Path) -> None:
    """The machine's packages, as far as this checkout has them: their top-level entries, linked."""
    dest.mkdir()
    for name in sorted(gpu_wheels.machine_has()):
        try:
            base, files = installed_files(name)
        except md.PackageNotFoundError:
            continue
        for top in {f.parts[0] for f in files}:
            if not (dest / top).exists() and (base / top).exists():
                (dest / top).symlink_to(base / top)


@pytest.mark.slow
def test_the_gpu_check_sets_itself_up_and_runs_on_a_machine_without_mlflow_or_hydra(tmp_path):
    wheels, site, out = tmp_path / "whl", tmp_path / "machine-site", tmp_path / "out"
    wheels.mkdir()
    built = [wheel_of(name, wheels) for name in gpu_wheels.closure()]
    machine_site(site)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "py")], check=True)
    python = tmp_path / "py" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(site)
    bare = subprocess.run([str(python), "-c", "import hydra"], capture_output=True, env=env)
    assert bare.returncode != 0                       # the imitated machine has no Hydra of its own
    tiny = [a for a in TINY if not a.startswith("progress")] + ["parent.widths=[4,8,8]"]    # a small ResNet-8
    proc = subprocess.run([str(python), "benchmarks/gpu_check.py", str(out), "--device", "cpu", "--wheels", str(wheels),
                           "--run-args", *tiny, "--scaling-args", "--factors", "population", "--gens", "1",
                           "--warmup", "1"], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:] + log[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["packages"] == f"{len(built)} wheels from {wheels}"
    assert [s["step"] for s in summary["steps"]] == ["tests", "bench_scaling", "run mlp seed 0", "run mlp seed 1",
                                                      "run cnn seed 0", "run cnn seed 1", "run resnet seed 0",
                                                      "run resnet seed 1", "figures"]
    assert [(r["parent"], r["status"]) for r in summary["runs"]] == [
        (kind, "FINISHED") for kind in ("mlp", "cnn", "resnet") for _ in (0, 1)]
    assert all(r["seconds_per_generation"] > 0 and r["process_seconds"] > r["run_seconds"] for r in summary["runs"])
    for kind in ("mlp", "cnn"):
        (grid_run,) = [r for r in summary["runs"] if r["seed"] == "1" and r["parent"] == kind]   # the parent cached
        assert summary["grid_estimate_s"][kind] == pytest.approx(70 * grid_run["process_seconds"])
        # the CPU reference is this machine's CPU: the ratio is read from it (the committed one)
        assert grid_run["cpu_ratio"] == pytest.approx(grid_run["cpu_seconds_per_generation"]
                                                      / grid_run["seconds_per_generation"])
    assert (out / "scaling" / "scaling.csv").exists() and (out / "figures" / "fig2_accuracy.png").exists()
    assert "| cnn | " in (out / "summary.md").read_text() and "| resnet | " in (out / "summary.md").read_text()
