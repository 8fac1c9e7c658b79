"""Shared fixtures: the real composed config, shrunk; a temporary MLflow store; a small parent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ecomp.app.cli import CONF_DIR, check_overrides
from ecomp.app.config import register_configs

REPO = Path(__file__).resolve().parents[1]

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


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``run.py`` (or another script) with this interpreter; returns the completed process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def random_layers(widths: list[int], generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(widths[i + 1], widths[i], generator=generator) / widths[i] ** 0.5,
             torch.randn(widths[i + 1], generator=generator) * 0.1) for i in range(len(widths) - 1)]
