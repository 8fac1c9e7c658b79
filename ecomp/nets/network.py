"""Networks on disk: a state dict plus a JSON description, loaded with ``weights_only=True``.

``<path>`` holds the ``(weight, bias)`` pairs as ``{i}.weight`` / ``{i}.bias``; ``<path>.json``
holds the network's :meth:`ecomp.nets.structure.Structure.meta` (its kind and shape) and
whatever the writer adds. Nothing pickled is ever executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ecomp.nets.kinds import from_meta
from ecomp.nets.structure import Blueprint, Structure


def save_network(net: Structure, path: Path, extra: dict | None = None) -> None:
    """Write ``<path>`` (state dict) and ``<path>.json`` (the network's description + ``extra``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"{i}.{k}": t.detach().cpu().contiguous()
             for i, (w, b) in enumerate(net.layers) for k, t in (("weight", w), ("bias", b))}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    meta = {**net.meta(), **(extra or {})}
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path)  # atomic: a reader never sees half a checkpoint


def load_network(path: Path, expected: Blueprint | None = None) -> Structure:
    """Load a network saved by :func:`save_network` (an MLP's ``.json`` may be missing: its
    shapes say everything).

    Raises ``ValueError`` naming the file when it is unreadable or does not match ``expected``.
    """
    path = Path(path)
    meta_path = path.with_suffix(path.suffix + ".json")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        layers = [(state[f"{i}.weight"], state[f"{i}.bias"]) for i in range(len(state) // 2)]
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        net = from_meta(meta, layers)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"network file {path} is unreadable or corrupt ({exc})") from exc
    if expected is not None and not expected.matches(net):
        raise ValueError(f"network file {path} holds {net.meta()}, expected {expected}")
    return net
