"""Shared fixtures: the real composed config, shrunk; a temporary MLflow store; a small parent."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase
from hydra import compose, initialize_config_dir

from ecomp.app.cli import CONF_DIR, check_overrides
from ecomp.app.config import register_configs

REPO = Path(__file__).resolve().parents[1]
# Hypothesis keeps its examples and caches under .cache/ (which make prepares), not in a
# .hypothesis/ folder of the checkout.
set_hypothesis_home_dir(REPO / ".cache" / "hypothesis")
settings.register_profile("ecomp", database=DirectoryBasedExampleDatabase(str(REPO / ".cache" / "hypothesis")))
settings.load_profile("ecomp")

# Small but real: FashionMNIST, a 784-32-32-10 parent (1 epoch), 10 individuals, 5 generations.
TINY = [
    "parent.hidden=[32,32]", "parent.epochs=1",
    "population.size=10", "data.train_size=500", "data.batch_size=100", "data.test_size=1000",
    "progress=false",
]


@pytest.fixture(scope="session")
def parent_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parents")


@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def make_cfg(parent_cache, store):
    """Compose ``conf/config.yaml`` with TINY + a temporary store + the given overrides."""
    register_configs()

    def _make(*overrides: str):
        ov = [*TINY, f"parent.cache_dir={parent_cache}", f"tracking.uri={store}", *overrides]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=check_overrides(ov))

    return _make


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``run.py`` (or another script of the repository) with this interpreter, in a fresh
    temporary working directory unless ``cwd`` is given (so that whatever it writes relative to
    the working directory, a Hydra ``outputs/`` folder say, lands outside the repository)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    script = REPO / args[0]
    argv = [str(script) if script.is_file() else args[0], *args[1:]]
    return subprocess.run([sys.executable, *argv], cwd=cwd or tempfile.mkdtemp(prefix="ecomp-cli-"),
                          capture_output=True, text=True, timeout=timeout, env=env)


# -- the repository stays clean -------------------------------------------------------------------
# What `make` itself prepares in the checkout; anything else a test run creates there fails the suite.
PREPARED = (".venv/", ".cache/", "data/", "ecomp.egg-info/")


def _untracked() -> set[str] | None:
    """``git status --porcelain --ignored`` entries that are not tracked files (None: not a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--ignored", "--untracked-files=all"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {line[3:] for line in out.stdout.splitlines() if line[:2] in ("??", "!!")}


def _made_by_tests(before: set[str], after: set[str]) -> list[str]:
    return sorted(p for p in after - before
                  if not p.startswith(PREPARED) and "__pycache__/" not in p)


def pytest_sessionstart(session) -> None:
    session.config._repo_before = _untracked()        # noqa: SLF001 - pytest's own config object


def pytest_sessionfinish(session, exitstatus) -> None:
    before = getattr(session.config, "_repo_before", None)
    after = _untracked() if before is not None else None
    if after is None:
        return
    made = _made_by_tests(before, after)
    if made:
        print(f"\nerror: the tests wrote into the repository ({len(made)} paths), e.g. "
              f"{', '.join(made[:8])}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def random_layers(widths: list[int], generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(widths[i + 1], widths[i], generator=generator) / widths[i] ** 0.5,
             torch.randn(widths[i + 1], generator=generator) * 0.1) for i in range(len(widths) - 1)]


def random_mlp(widths: list[int], generator: torch.Generator):
    """An :class:`ecomp.nets.mlp.MLP` of :func:`random_layers`."""
    from ecomp.nets.mlp import MLP

    return MLP(random_layers(widths, generator))
