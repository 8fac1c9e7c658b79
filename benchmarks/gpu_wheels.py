"""Prepare ``.whl/`` for ``benchmarks/gpu_check.py`` on the lent GPU machine, which has Python 3.12,
torch and the packages in ``benchmarks/gpu_machine.txt``, but neither MLflow nor Hydra, and no network.

    python benchmarks/gpu_wheels.py          # the one command: wheels for Python 3.12 + FashionMNIST into .whl/
    python benchmarks/gpu_wheels.py --list   # what it would fetch, and nothing else

What is fetched is the dependency closure of :data:`NEEDS` (what a tracked ``run.py`` and the
CUDA tests import beyond torch) minus what that machine has, at the versions installed here, so
that the GPU runs the versions CI tests. Markers are evaluated for Linux x86-64, Python 3.12.
FashionMNIST goes along gzipped (30 MiB). ``.whl/`` is ignored by git; the device tool carries it
(``carry: [".whl"]``) and the whole tree must stay under 64 MiB, so the total is checked here.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata as md
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
MACHINE = Path(__file__).with_name("gpu_machine.txt")
# Hydra composes run.py's config; MLflow's client and its SQLite store track the run.
NEEDS = ["hydra-core", "mlflow-skinny", "mlflow-tracing", "sqlalchemy", "alembic"]
TARGET = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
BUDGET_MIB = 56                      # of the 64 MiB that travel: the rest is the working tree


def machine_has() -> set[str]:
    lines = (line.strip() for line in MACHINE.read_text().splitlines())
    return {canonicalize_name(line) for line in lines if line and not line.startswith("#")}


def closure(needs: list[str] = NEEDS, have: set[str] | None = None) -> dict[str, str]:
    """Name -> version installed here, for ``needs`` and everything they require (for the target
    machine) that the machine does not have."""
    have = machine_has() if have is None else have
    out: dict[str, str] = {}
    todo = [canonicalize_name(n) for n in needs]
    while todo:
        name = todo.pop()
        if name in out or name in have:
            continue
        dist = md.distribution(name)
        out[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({**TARGET, "extra": ""}):
                todo.append(canonicalize_name(req.name))
    return dict(sorted(out.items()))


def download(pins: dict[str, str], dest: Path) -> None:
    dest.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    wanted = [f"{n}=={v}" for n, v in pins.items()]
    platform = [a for p in PLATFORMS for a in ("--platform", p)]
    binary = [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
              "--implementation", "cp", *platform, "-d", str(dest)]
    for spec in wanted:
        if subprocess.run([*binary, spec], capture_output=True).returncode:
            # no wheel on the index (antlr4-python3-runtime is an sdist): build a pure-Python one
            subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(dest), spec], check=True)


def copy_fashion_mnist(dest: Path) -> None:
    """The four FashionMNIST files, gzipped, from Debian's package or this checkout's ``data/``."""
    from ecomp.nets.datasets import DEBIAN_DIR, RAW_FILES, raw_dir

    dest.mkdir(exist_ok=True)
    for name in RAW_FILES:
        if (DEBIAN_DIR / f"{name}.gz").exists():
            shutil.copy(DEBIAN_DIR / f"{name}.gz", dest / f"{name}.gz")
        else:
            with open(raw_dir(ROOT / "data") / name, "rb") as src, gzip.open(dest / f"{name}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the distributions and versions, fetch nothing")
    ap.add_argument("--dest", type=Path, default=WHEELS)
    a = ap.parse_args()
    pins = closure()
    if a.list:
        print("\n".join(f"{n}=={v}" for n, v in pins.items()))
        return
    download(pins, a.dest)
    copy_fashion_mnist(a.dest / "fashion-mnist")
    mib = sum(f.stat().st_size for f in a.dest.rglob("*") if f.is_file()) / 2 ** 20
    print(f"{a.dest}: {len(pins)} wheels + FashionMNIST, {mib:.1f} MiB")
    if mib > BUDGET_MIB:
        raise SystemExit(f"{a.dest} holds {mib:.1f} MiB: over the {BUDGET_MIB} MiB left for it of the 64 MiB that "
                         "travel to the GPU machine")


if __name__ == "__main__":
    main()
