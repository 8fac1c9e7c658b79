"""The classification datasets a run can use (``data=<name>``), read offline.

Each is described by a :class:`DatasetInfo` (features after flattening, classes, the
sizes of its train and test splits) so that the configuration can be checked, and a
parent's input and output sizes filled in, before anything is read. Images are
flattened to one row of floats in ``[0, 1]`` (what ``transforms.ToTensor()`` gives).

* ``fashion_mnist`` (the paper's): files under ``<root>/FashionMNIST/raw``; when
  missing, unpacked from Debian's ``dataset-fashion-mnist`` package, else downloaded
  by torchvision only with ``data.download=true``.
* ``mnist``, ``kmnist``, ``cifar10``: torchvision's classes read ``<root>/<folder>``
  as torchvision lays it out; downloaded only with ``data.download=true``.
* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, in the wheel: offline
  everywhere). They come without a split: the last 500 images are the test split,
  the first 1,297 the training split (no shuffle, as scikit-learn's examples split them).

A dataset that cannot be found is one :class:`DataError` line naming the remedies.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ecomp.errors import DataError


@dataclass
class Split:
    x: Tensor  # (n, features) float32 in [0, 1]
    y: Tensor  # (n,) int64


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_dim: int
    classes: int
    n_train: int
    n_test: int
    read: Callable[[Path, bool, bool], Split]        # (root, train, download) -> the whole split
    files: Callable[[Path, bool], list[Path]]        # the files a split is read from (cache key)
    shape: tuple[int, int, int] = (1, 28, 28)        # (channels, height, width) of one image


# --- FashionMNIST: torchvision's files, Debian's package, or a download -------------------------

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


def raw_dir(root: Path, folder: str = "FashionMNIST") -> Path:
    return Path(root) / folder / "raw"


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
        from torchvision.datasets import FashionMNIST

        try:
            for train in (True, False):
                FashionMNIST(str(root), train=train, download=True)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            raise DataError(_fashion_missing(root) + f" (download failed: {exc})") from exc
        _check_raw(raw)
        return root
    raise DataError(_fashion_missing(root))


def _fashion_missing(root: Path) -> str:
    return (f"FashionMNIST not found under {raw_dir(root)}: install Debian's package "
            f"(apt-get install dataset-fashion-mnist, files in {DEBIAN_DIR}) or allow "
            f"torchvision to download it with data.download=true")


def read_idx(path: Path) -> Tensor:
    """An unsigned-byte IDX file (the MNIST family's format) as a uint8 tensor, without torchvision
    (importing it costs about a second of start-up)."""
    import numpy as np

    raw = Path(path).read_bytes()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"dataset file {path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"dataset file {path} holds {data.size} values, its header says {dims}")
    return torch.from_numpy(data.copy()).view(dims)


def _read_idx_split(raw: Path, train: bool) -> Split:
    stem = "train" if train else "t10k"
    images, labels = read_idx(raw / f"{stem}-images-idx3-ubyte"), read_idx(raw / f"{stem}-labels-idx1-ubyte")
    return _flatten(images, labels)


def _flatten(images, targets) -> Split:
    """torchvision's ``data`` (uint8 tensor or array, ``(n, h, w[, c])``) and ``targets`` as a Split,
    each image flattened channel by channel (``C x H x W``, as ``ToTensor`` orders it; a CNN reads
    it back as maps)."""
    x = torch.as_tensor(images)
    if x.dim() == 4:
        x = x.permute(0, 3, 1, 2)
    x = x.reshape(x.shape[0], -1).to(torch.float32).div_(255.0)   # = ToTensor(), in one step
    return Split(x, torch.as_tensor(targets).to(torch.int64))


def _read_fashion(root: Path, train: bool, download: bool) -> Split:
    return _read_idx_split(raw_dir(prepare(root, download)), train)


def _fashion_files(root: Path, train: bool) -> list[Path]:
    return [raw_dir(root) / n for n in RAW_FILES if n.startswith("train" if train else "t10k")]


# --- Other torchvision classification sets --------------------------------------------------------

def _torchvision(class_name: str, folder: str, idx: bool = False) -> tuple[Callable, Callable]:
    """Reader and file list of a torchvision dataset class; ``idx``: the MNIST family, whose raw
    files are read directly when present (torchvision only to download them)."""
    def read(root: Path, train: bool, download: bool) -> Split:
        raw = raw_dir(root, folder)
        if idx and all((raw / n).exists() for n in RAW_FILES):
            return _read_idx_split(raw, train)
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        try:
            ds = cls(str(root), train=train, download=False)
        except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError, OSError, ...
            if not download:
                raise DataError(f"{class_name} not found under {Path(root) / folder} ({exc}): put torchvision's "
                                f"files for it there or allow torchvision to download it with "
                                f"data.download=true") from None
            try:
                ds = cls(str(root), train=train, download=True)
            except Exception as exc2:  # noqa: BLE001
                raise DataError(f"{class_name} not found under {Path(root) / folder} and the download "
                                f"failed ({exc2}); put torchvision's files for it there") from None
        return _flatten(ds.data, ds.targets)

    def files(root: Path, train: bool) -> list[Path]:
        base = Path(root) / folder
        return sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []

    return read, files


# --- scikit-learn's bundled digits ----------------------------------------------------------------

DIGITS_TEST = 500


def _read_digits(root: Path, train: bool, download: bool) -> Split:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("data=digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.float32).div_(16.0)        # pixel values 0..16
    y = torch.as_tensor(d.target, dtype=torch.int64)
    cut = x.shape[0] - DIGITS_TEST
    return Split(x[:cut], y[:cut]) if train else Split(x[cut:], y[cut:])


def _no_files(root: Path, train: bool) -> list[Path]:
    return []


def _registry() -> dict[str, DatasetInfo]:
    mnist, kmnist, cifar = (_torchvision("MNIST", "MNIST", idx=True), _torchvision("KMNIST", "KMNIST", idx=True),
                            _torchvision("CIFAR10", "cifar-10-batches-py"))
    return {d.name: d for d in (
        DatasetInfo("fashion_mnist", 784, 10, 60_000, 10_000, _read_fashion, _fashion_files),
        DatasetInfo("mnist", 784, 10, 60_000, 10_000, *mnist),
        DatasetInfo("kmnist", 784, 10, 60_000, 10_000, *kmnist),
        DatasetInfo("cifar10", 3072, 10, 50_000, 10_000, *cifar, shape=(3, 32, 32)),
        DatasetInfo("digits", 64, 10, 1797 - DIGITS_TEST, DIGITS_TEST, _read_digits, _no_files, shape=(1, 8, 8)),
    )}


DATASETS: dict[str, DatasetInfo] = _registry()


def info(name: str) -> DatasetInfo:
    """The dataset called ``name``; ``KeyError`` if there is none."""
    return DATASETS[name]
