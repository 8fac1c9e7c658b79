"""The user's own images as a dataset: ``data=folder`` and ``data=tensors``.

* ``folder``: a class-per-folder tree of images, read by ``torchvision.datasets.ImageFolder``
  (a class is a sub-folder, its name the label, in sorted order), every image converted to
  ``channels`` (1: grey, 3: RGB) and resized to ``size``. With ``train/`` and ``test/`` sub-folders
  of the same classes, those are the splits; otherwise the test split is drawn from all images.
* ``tensors``: a ``.pt`` read with ``torch.load(weights_only=True)`` or an ``.npz`` read with
  ``numpy.load(allow_pickle=False)`` (nothing in either is unpickled), holding ``x`` (images
  ``N x C x H x W`` or ``N x H x W``) and ``y`` (integer labels ``0 .. classes - 1``), and
  optionally ``x_test`` and ``y_test``; without those the test split is drawn from ``x``.

Images become rows of floats as the built-in datasets' do: ``uint8`` pixels divided by 255
(floats kept as they are), flattened channel by channel, then ``(x - mean) / std`` per channel
when ``mean`` and ``std`` are given. A test split drawn from the data is the same for every run
seed (``split_seed``, ``test_fraction``), so runs of different seeds are compared on one test set;
the validation images are then drawn per run from the training split, as for every dataset.

Everything is read and checked once, when the configuration is checked (before any run is
created): files that are not what they claim, labels out of range, empty classes and mismatched
shapes are one :class:`DataError` line naming the file and what is allowed.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from ecomp.errors import DataError
from ecomp.nets.datasets import DatasetInfo, Split

KINDS = ("folder", "tensors")
TENSOR_SUFFIXES = (".pt", ".pth", ".npz")


@dataclass(frozen=True)
class UserData:
    kind: str                                  # folder | tensors
    path: str                                  # the folder, or the .pt / .npz file
    size: tuple[int, int] | None = None        # folder: (height, width) every image is resized to
    channels: int = 1                          # folder: 1 (grey) or 3 (RGB)
    mean: tuple[float, ...] | None = None      # per channel, with std: (x - mean) / std
    std: tuple[float, ...] | None = None
    test_fraction: float = 0.2                 # of all images, when the data has no test split
    split_seed: int = 0                        # the draw of that test split


def describe(data: UserData) -> DatasetInfo:
    """The dataset ``data`` describes, read and checked (once while its files are unchanged)."""
    path = Path(data.path).expanduser()
    if not path.exists():
        raise DataError(f"data.path={data.path!r}: no such {'folder' if data.kind == 'folder' else 'file'}")
    train, test, (c, h, w) = _read(data, _stamp(path))
    classes = int(train.y.max()) + 1

    def read(root: Path, is_train: bool, download: bool) -> Split:
        return _read(data, _stamp(path))[0 if is_train else 1]

    def files(root: Path, is_train: bool) -> list[Path]:
        return [path]

    return DatasetInfo(data.kind, c * h * w, classes, train.x.shape[0], test.x.shape[0], read, files,
                       shape=(c, h, w))


def identity(data: UserData) -> str:
    """The data as read, in 16 hex digits: its settings and its files' names, sizes and times (a
    parent trained on it is cached under this)."""
    stamp = _stamp(Path(data.path).expanduser())
    return f"{data.kind}-" + hashlib.sha256(repr((data, stamp)).encode()).hexdigest()[:16]


def _stamp(path: Path) -> tuple:
    """What changes when the data changes: the file's, or every file's under the folder, size and time."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


@lru_cache(maxsize=4)
def _read(data: UserData, stamp: tuple) -> tuple[Split, Split, tuple[int, int, int]]:
    """``(train, test, (channels, height, width))``, checked; kept while ``stamp`` holds."""
    (x, y), test, shape = _read_folder(data) if data.kind == "folder" else _read_tensors(data)
    (x, y), (tx, ty) = _draw_test(x, y, data) if test is None else ((x, y), test)
    if x.shape[0] == 0 or tx.shape[0] == 0:
        raise DataError(f"data.path={data.path!r}: {'no training' if x.shape[0] == 0 else 'no test'} images "
                        f"(data.test_fraction={data.test_fraction} of {x.shape[0] + tx.shape[0]})")
    for key in ("mean", "std"):
        values = getattr(data, key)
        if values is not None and len(values) != shape[0]:
            raise DataError(f"data.{key}={list(values)}: {shape[0]} numbers, one per channel of the images")
    classes = int(y.max()) + 1
    _check_labels(data, y, classes, "training")
    _check_labels(data, ty, classes, "test")
    return Split(_normalise(x, data, shape), y), Split(_normalise(tx, data, shape), ty), shape


def _draw_test(x: Tensor, y: Tensor, data: UserData) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(train, test)`` of images with no test split of their own: ``test_fraction`` of them, by
    one permutation of ``split_seed`` (the same for every run)."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(data.split_seed))
    n_test = round(data.test_fraction * x.shape[0])
    test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
    return (x[train], y[train]), (x[test], y[test])


def _check_labels(data: UserData, y: Tensor, classes: int, split: str) -> None:
    if y.numel() and int(y.min()) < 0:
        raise DataError(f"data.path={data.path!r}: {split} label {int(y.min())} is negative (labels are 0 .. classes - 1)")
    if y.numel() and int(y.max()) >= classes:
        raise DataError(f"data.path={data.path!r}: {split} label {int(y.max())} is out of range: the training "
                        f"labels are 0 .. {classes - 1}")
    if split == "training":
        counts = torch.bincount(y, minlength=classes)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise DataError(f"data.path={data.path!r}: class {empty[0]} has no training images (every label "
                            f"0 .. {classes - 1} needs some)")


def _normalise(x: Tensor, data: UserData, shape: tuple[int, int, int]) -> Tensor:
    x = x.reshape(x.shape[0], -1)
    if data.mean is None:
        return x.contiguous()
    c, h, w = shape
    mean = torch.tensor(data.mean, dtype=torch.float32).repeat_interleave(h * w)
    std = torch.tensor(data.std, dtype=torch.float32).repeat_interleave(h * w)
    return ((x - mean) / std).contiguous()


# -- data=tensors -------------------------------------------------------------------------------

def _read_tensors(data: UserData):
    path = Path(data.path).expanduser()
    if path.suffix not in TENSOR_SUFFIXES:
        raise DataError(f"data.path={data.path!r}: a {' or '.join(TENSOR_SUFFIXES)} file of tensors x and y")
    arrays = _load_npz(path) if path.suffix == ".npz" else _load_pt(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"data.path={data.path!r} has no {missing[0]!r} (it holds {', '.join(sorted(arrays)) or 'nothing'}; "
                        f"expected x, y and optionally x_test, y_test)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"data.path={data.path!r}: x_test and y_test come together (it holds only one)")
    x, y = _images(data, arrays["x"], "x"), _labels(data, arrays["y"], "y")
    _same_count(data, x, y, "x", "y")
    test = None
    if "x_test" in arrays:
        tx, ty = _images(data, arrays["x_test"], "x_test"), _labels(data, arrays["y_test"], "y_test")
        _same_count(data, tx, ty, "x_test", "y_test")
        if tx.shape[1:] != x.shape[1:]:
            raise DataError(f"data.path={data.path!r}: x_test images are {_dims(tx)}, x images {_dims(x)}")
        test = (tx, ty)
    return (x, y), test, tuple(x.shape[1:])


def _load_npz(path: Path) -> dict[str, Tensor]:
    import numpy as np

    if not zipfile.is_zipfile(path):
        raise DataError(f"data.path={str(path)!r} is not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"data.path={str(path)!r}: unreadable without unpickling ({exc})") from None


def _load_pt(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise DataError(f"data.path={str(path)!r}: not a file of tensors torch reads with weights_only=True "
                        f"({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise DataError(f"data.path={str(path)!r}: expected a dict of tensors (x, y, optionally x_test, y_test)")
    return obj


def _images(data: UserData, x: Tensor, key: str) -> Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or min(x.shape) == 0:
        raise DataError(f"data.path={data.path!r}: {key} is {_dims(x)}; expected images N x C x H x W "
                        f"(C = 1 or 3) or N x H x W")
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise DataError(f"data.path={data.path!r}: {key} is {x.dtype}; expected uint8 pixels or floats")
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"data.path={data.path!r}: {key} holds NaN or infinite values")
    return x


def _labels(data: UserData, y: Tensor, key: str) -> Tensor:
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataError(f"data.path={data.path!r}: {key} is {_dims(y)} {y.dtype}; expected one integer label per image")
    return y.to(torch.int64)


def _same_count(data: UserData, x: Tensor, y: Tensor, xk: str, yk: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise DataError(f"data.path={data.path!r}: {x.shape[0]} images in {xk} but {y.shape[0]} labels in {yk}")


def _dims(t: Tensor) -> str:
    return "x".join(map(str, t.shape))


# -- data=folder --------------------------------------------------------------------------------

def _read_folder(data: UserData):
    root = Path(data.path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={data.path!r}: not a folder (data=folder reads a folder of class folders)")
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    if split_dirs:
        train = _image_folder(data, root / "train")
        test = _image_folder(data, root / "test", train[2])
        return train[:2], test[:2], train[3]
    x, y, _, shape = _image_folder(data, root)
    return (x, y), None, shape


def _image_folder(data: UserData, root: Path, classes: list[str] | None = None):
    """``(images, labels, class names, shape)`` of one class-per-folder tree."""
    from PIL import Image, UnidentifiedImageError
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    mode = {1: "L", 3: "RGB"}[data.channels]
    to_tensor = transforms.Compose([transforms.Lambda(lambda im: im.convert(mode)),
                                    transforms.Resize(tuple(data.size)), transforms.PILToTensor()])
    try:
        folder = ImageFolder(str(root), transform=to_tensor)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"data.path={data.path!r}: {str(exc).splitlines()[0]} (a folder of class folders of "
                        f"images: .png, .jpg, ...)") from None
    if classes is not None and folder.classes != classes:
        raise DataError(f"data.path={data.path!r}: test/ has classes {folder.classes}, train/ {classes}")
    images = []
    for file, _ in folder.samples:
        try:
            with Image.open(file) as im:
                images.append(to_tensor(im))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"data.path={data.path!r}: {file} is not an image ({exc.__class__.__name__})") from None
    x = torch.stack(images).to(torch.float32).div_(255.0)
    y = torch.tensor(folder.targets, dtype=torch.int64)
    return x, y, folder.classes, (data.channels, *data.size)
