"""What the runs of one process share, owned by the entry point and passed down.

A sweep runs many jobs in one process (Hydra's basic launcher all of them, a joblib worker
several), and each would otherwise read and convert the dataset, read the user's checkpoint,
measure the parent on the test images and hash the splits again. ``run.py`` holds one
:class:`Caches` for all its jobs and the sweep's set-up callback one of its own; a caller
that passes none gets a fresh one (nothing shared). Every entry is keyed by what it is
computed from (a file's identity, tensor bytes), so a changed input is never served stale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from ecomp.app.user_model import ModelSource
from ecomp.nets import data as data_mod
from ecomp.nets.checkpoint import read_checkpoint
from ecomp.nets.structure import Structure, accuracy


class Bounded:
    """At most ``size`` entries; emptied when full (a later call recomputes what it needs)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: dict[Hashable, Any] = {}

    def get(self, key: Hashable | None, make: Callable[[], Any]) -> Any:
        """The entry for ``key``, made by ``make()`` the first time; ``key=None``: never kept."""
        if key is None:
            return make()
        if key not in self.entries:
            value = make()
            if len(self.entries) >= self.size:
                self.entries.clear()
            self.entries[key] = value
        return self.entries[key]


class Caches:
    def __init__(self) -> None:
        self.splits = Bounded(4)
        self.checkpoints = Bounded(1)
        self.models = Bounded(1)
        self.parent_accuracy = Bounded(8)
        self.digests = Bounded(16)

    def split(self, name: str, root: Path, train: bool, download: bool,
              user: data_mod.UserData | None = None) -> data_mod.Split:
        """The dataset's whole split (built-in ``name`` or the user's ``user``), read once while its
        files stay the same (callers only index or slice the shared tensors)."""
        return self.splits.get(data_mod.files_key(name, root, train, user),
                               lambda: data_mod.load(root, train=train, download=download, name=name, user=user))

    def checkpoint(self, path: str | Path) -> tuple[Structure, str]:
        """``(layers, sha256)`` of the checkpoint at ``path``, read once while the file is unchanged."""
        p = Path(path).expanduser()
        st = p.stat() if p.is_file() else None
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns) if st else None
        return self.checkpoints.get(key, lambda: read_checkpoint(p))

    def model(self, source: ModelSource) -> tuple[Structure, str]:
        """``(network, sha256 of the weights)`` of a ``parent=module`` parent, built and read once while
        its weights file is unchanged."""
        p = Path(source.weights).expanduser()
        st = p.stat() if p.is_file() else None
        key = (source, str(p.resolve()), st.st_size, st.st_mtime_ns) if st else None
        return self.models.get(key, source.read)

    def parent_test_accuracy(self, parent: Structure, test: data_mod.Split, size: int) -> float:
        """The parent's accuracy on the first ``size`` test images, keyed by its weights' bytes and
        the split (kept alive with the entry, so its id is not reused)."""
        h = hashlib.sha256()
        for w, b in parent.layers:
            h.update(w.contiguous().numpy().tobytes())
            h.update(b.contiguous().numpy().tobytes())
        key = (h.hexdigest(), id(test), size)
        return self.parent_accuracy.get(key, lambda: (accuracy(parent, test.x[:size], test.y[:size]), test))[0]

    def digest(self, split: data_mod.Split) -> str:
        """sha256 of a split's images and labels (first 16 hex digits): what MLflow shows as its
        digest. Keyed by the image tensor, which the entry keeps alive (ids stay unique)."""
        def make() -> tuple[str, object]:
            h = hashlib.sha256(split.x.contiguous().numpy().tobytes())
            h.update(split.y.contiguous().numpy().tobytes())
            return h.hexdigest()[:16], split.x
        return self.digests.get(id(split.x), make)[0]
