"""FashionMNIST through torchvision, offline first.

Order of preference for the raw files under ``<root>/FashionMNIST/raw``:
already there -> unpacked from Debian's ``dataset-fashion-mnist`` package ->
downloaded by torchvision (only when ``download=True``). Anything else is one
clear error naming both remedies.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import FashionMNIST

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Expected sizes of the unpacked files: a truncated file is caught before parsing.
RAW_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 784,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 784,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}


class DataError(RuntimeError):
    """The dataset cannot be found or read."""


@dataclass
class Split:
    x: Tensor  # (n, 784) float32 in [0, 1], as torchvision's ToTensor gives
    y: Tensor  # (n,) int64


def raw_dir(root: Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def _check_raw(raw: Path) -> None:
    for name in RAW_FILES:
        f = raw / name
        size = f.stat().st_size
        if size != RAW_SIZES[name]:
            raise DataError(f"dataset file {f} is truncated or corrupt ({size} bytes, expected "
                            f"{RAW_SIZES[name]}); delete it and run again to re-create it")


def prepare(root: Path, download: bool = False, debian_dir: Path = DEBIAN_DIR) -> Path:
    """Make sure the four raw FashionMNIST files exist under ``root``; return ``root``."""
    root = Path(root)
    raw = raw_dir(root)
    if all((raw / n).exists() for n in RAW_FILES):
        _check_raw(raw)
        return root
    if all((debian_dir / f"{n}.gz").exists() for n in RAW_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for n in RAW_FILES:
            if (raw / n).exists():
                continue
            tmp = raw / f"{n}.tmp"
            try:
                with gzip.open(debian_dir / f"{n}.gz", "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as exc:
                tmp.unlink(missing_ok=True)
                raise DataError(f"dataset file {debian_dir / (n + '.gz')} is unreadable ({exc})") from exc
            tmp.replace(raw / n)
        _check_raw(raw)
        return root
    if download:
        try:
            for train in (True, False):
                FashionMNIST(str(root), train=train, download=True)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            raise DataError(_missing_message(root) + f" (download failed: {exc})") from exc
        _check_raw(raw)
        return root
    raise DataError(_missing_message(root))


def _missing_message(root: Path) -> str:
    return (f"FashionMNIST not found under {raw_dir(root)}: install Debian's package "
            f"(apt-get install dataset-fashion-mnist, files in {DEBIAN_DIR}) or allow "
            f"torchvision to download it with data.download=true")


# Splits already read in this process, keyed by the raw files' identity. A sweep runs many
# jobs per process (Hydra's basic launcher all of them, joblib's workers several each), and
# reading and converting the 60,000 training images costs about 0.1 s a run. The tensors
# are shared: callers index or slice them and never write into them.
_LOADED: dict[tuple, "Split"] = {}


def _files_key(root: Path, train: bool) -> tuple:
    raw = raw_dir(root)
    names = [n for n in RAW_FILES if n.startswith("train" if train else "t10k")]
    stats = [(raw / n).stat() for n in names]
    return (str(raw.resolve()), train, *((n, st.st_size, st.st_mtime_ns, st.st_ino) for n, st in zip(names, stats)))


def load(root: Path, train: bool, download: bool = False) -> Split:
    """The whole train or test split as tensors, via torchvision's dataset class (read once
    per process while the files stay the same)."""
    root = prepare(root, download)
    key = _files_key(root, train)
    if key in _LOADED:
        return _LOADED[key]
    try:
        ds = FashionMNIST(str(root), train=train, download=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"dataset files in {raw_dir(root)} are unreadable ({exc})") from exc
    # Same values as transforms.ToTensor() applied image by image, in one step.
    x = ds.data.reshape(len(ds.data), -1).to(torch.float32).div_(255.0)
    split = Split(x, ds.targets.to(torch.int64))
    if len(_LOADED) >= 4:                                     # a stale copy after the files changed
        _LOADED.clear()
    _LOADED[key] = split
    return split


def random_subset(split: Split, size: int, generator: torch.Generator) -> Split:
    """``size`` images drawn without replacement (not class-balanced, as the authors' code)."""
    return draw_run_data(split, size, 0, generator).train


@dataclass
class RunData:
    """The training images one run may use, drawn once from one permutation of the training split.

    ``train`` is the run's subset (EComp evolves on it, baselines fine-tune on it): the
    first ``train_size`` images of the permutation, exactly the paper's subset. ``val`` is
    the next ``val_size`` images: no method trains or evolves on them. So the validation
    split costs no extra random draw and leaves the paper's subsets, and with them every
    EComp history, as they were. The parent, trained by the paper's recipe on all training
    images, has seen them: validation accuracy of networks derived from the parent is a
    little optimistic next to ``scratch``'s; the test split is unseen by all.
    """
    all_train: Split
    train: Split
    val: Split
    val_index: Tensor          # (val_size,) indices of the validation images in ``all_train``

    def without_val(self) -> Split:
        """Every training image except the validation ones, in their original order."""
        keep = torch.ones(self.all_train.x.shape[0], dtype=torch.bool)
        keep[self.val_index] = False
        return Split(self.all_train.x[keep], self.all_train.y[keep])


def draw_run_data(split: Split, train_size: int, val_size: int, generator: torch.Generator) -> RunData:
    """A run's subset and validation images (disjoint), from one ``randperm`` of ``generator``."""
    if train_size + val_size > split.x.shape[0]:
        raise ValueError(f"train_size + val_size = {train_size + val_size} exceeds the "
                         f"{split.x.shape[0]} training images")
    perm = torch.randperm(split.x.shape[0], generator=generator)
    idx, val_idx = perm[:train_size], perm[train_size:train_size + val_size]
    return RunData(split, Split(split.x[idx], split.y[idx]), Split(split.x[val_idx], split.y[val_idx]), val_idx)
