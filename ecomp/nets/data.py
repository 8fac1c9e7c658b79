"""A run's data: a dataset's splits and the run's subset and validation images.

Which datasets exist and how each is read offline is :mod:`ecomp.nets.datasets`; the user's own
images (``data=folder``, ``data=tensors``) are :mod:`ecomp.nets.user_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ecomp.nets.datasets import DatasetInfo, Split, info
from ecomp.nets.user_data import UserData, describe as describe_user_data

__all__ = ["Split", "RunData", "UserData", "dataset", "files_key", "load", "draw_run_data", "random_subset"]


def dataset(name: str, user: UserData | None = None) -> DatasetInfo:
    """The dataset a run reads: built-in ``name``, or the user's own images ``user``."""
    return info(name) if user is None else describe_user_data(user)


def files_key(name: str, root: Path, train: bool, user: UserData | None = None) -> tuple | None:
    """The identity of the files a split is read from (None while any is missing): a cache key."""
    files = dataset(name, user).files(root, train)
    if not all(f.exists() for f in files):
        return None
    stats = [f.stat() for f in files]
    return (name, user, str(Path(root).resolve()), train,
            *((str(f), st.st_size, st.st_mtime_ns, st.st_ino) for f, st in zip(files, stats)))


def load(root: Path, train: bool, download: bool = False, name: str = "fashion_mnist",
         user: UserData | None = None) -> Split:
    """The dataset's whole train or test split, flattened (:class:`ecomp.app.caches.Caches`
    keeps it for the later runs of a process)."""
    return dataset(name, user).read(Path(root), train, download)


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
