"""A user's trained network as the parent (``parent=checkpoint parent.path=...``), read safely.

Accepted:

* the ``state_dict()`` of an ``nn.Sequential`` of (optionally ``Flatten``,) ``Linear``
  and ``ReLU`` layers, as ``torch.save(model.state_dict(), path)`` writes it (keys
  ``"<index>.weight"`` and ``"<index>.bias"``; a Linear without bias reads as zero
  bias), which includes the networks this project saves (``best_network.pt``);
* a ``torch.export`` program (``.pt2``) of such a model, whose graph is checked to
  hold only linear, ReLU and flatten/reshape operations. It is read by :mod:`ecomp.nets.pt2`,
  never by ``torch.export.load`` (which may unpickle members with ``weights_only=False``).

A state dict holds no activations: a ReLU between consecutive linear layers is
assumed, as in every network this tool builds. The file's bytes are read once; its
digest and its weights come from those bytes, and whatever in them is pickled is
loaded with ``weights_only=True`` only, so nothing pickled is executed. Every problem
is one :class:`CheckpointError` line naming the file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from ecomp.errors import CheckpointError
from ecomp.nets.network import Layers
from ecomp.nets.pt2 import looks_pickled, read_archive, refusal_reason, weights_only_load

_KEY = re.compile(r"^(\d+)\.(weight|bias)$")
# torch.export graph operations a Flatten -> (Linear -> ReLU)* -> Linear model may hold.
_EXPORT_OPS = {"linear", "relu", "view", "reshape", "flatten", "_unsafe_view", "t", "addmm", "mm", "permute",
               "expand", "clone", "contiguous", "alias", "add", "relu_"}


def read_checkpoint(path: str | Path) -> tuple[Layers, str]:
    """The ``(weight, bias)`` pairs of the network in ``path`` (float32, CPU) and the sha256 of
    the bytes they were read from (the run's config hash includes it: new weights, new runs)."""
    path = Path(path).expanduser()
    where = f"parent.path={str(path)!r}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{where}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    if path.suffix == ".pt2":
        state = _export_state(data, where)
    else:
        state = _load_state(data, where)
    return _layers(state, where), hashlib.sha256(data).hexdigest()


def _load_state(data: bytes, where: str) -> dict:
    try:
        state = weights_only_load(data)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike
        why = refusal_reason(exc)
        if why.startswith("needs "):
            raise CheckpointError(f"{where}: the file holds pickled Python objects ({why[6:]}; e.g. a whole "
                                  f"model saved with torch.save(model)), which are not loaded for safety; save "
                                  f"model.state_dict() instead") from None
        if looks_pickled(data) and "Weights only load failed" in str(exc):
            raise CheckpointError(f"{where}: the file holds pickled Python objects that are not plain tensors "
                                  f"({why}), which are not loaded for safety; save model.state_dict()") from None
        raise CheckpointError(f"{where}: not a readable PyTorch file ({why})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where}: expected a state dict (names -> tensors), found {type(state).__name__}")
    return state


def _export_state(data: bytes, where: str) -> dict:
    archive = read_archive(data, where)
    for op in archive.ops:
        if op not in _EXPORT_OPS:
            raise CheckpointError(f"{where}: the program computes {op!r}; only Linear and ReLU layers "
                                  f"(and a Flatten) are supported")
    state = archive.state
    names = {n: re.sub(r"^.*?(\d+)\.(weight|bias)$", r"\1.\2", n) for n in state}
    return {names[n]: t for n, t in state.items()}


def _layers(state: dict, where: str) -> Layers:
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in state.items():
        m = _KEY.match(name)
        if m is None:
            kind = name.rsplit(".", 1)[-1]
            guess = " (a BatchNorm?)" if kind in ("running_mean", "running_var", "num_batches_tracked") else ""
            raise CheckpointError(f"{where}: entry {name!r} is not a Linear layer's weight or bias{guess}; "
                                  f"only an nn.Sequential of Linear and ReLU layers is supported")
        by_index.setdefault(int(m.group(1)), {})[m.group(2)] = t
    if not by_index:
        raise CheckpointError(f"{where}: the state dict holds no layers")
    layers: Layers = []
    for index in sorted(by_index):
        entry = by_index[index]
        w = entry.get("weight")
        if w is None or w.dim() != 2:
            shape = "no weight" if w is None else f"a {w.dim()}-D weight {tuple(w.shape)}"
            hint = " (a Conv?)" if w is not None and w.dim() > 2 else (" (a BatchNorm or LayerNorm?)"
                                                                         if w is not None and w.dim() == 1 else "")
            raise CheckpointError(f"{where}: layer {index} has {shape}{hint}; only Linear and ReLU layers are supported")
        b = entry.get("bias", torch.zeros(w.shape[0], dtype=w.dtype))
        if b.shape != (w.shape[0],):
            raise CheckpointError(f"{where}: layer {index}'s bias has shape {tuple(b.shape)}, expected ({w.shape[0]},)")
        if layers and w.shape[1] != layers[-1][0].shape[0]:
            raise CheckpointError(f"{where}: layer {index} takes {w.shape[1]} inputs but the layer before gives "
                                  f"{layers[-1][0].shape[0]}")
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise CheckpointError(f"{where}: layer {index} has non-finite weights (NaN or inf)")
        layers.append((w.detach().to(torch.float32).contiguous(), b.detach().to(torch.float32).contiguous()))
    if len(layers) < 2:
        raise CheckpointError(f"{where}: a single linear layer has no hidden layer to compress (at least 2 needed)")
    return layers


def check_fits(layers: Layers, where: str, input_dim: int, classes: int, data: str) -> None:
    """The network takes the data's features and outputs one score per class."""
    if layers[0][0].shape[1] != input_dim:
        raise CheckpointError(f"{where}: the network takes {layers[0][0].shape[1]} inputs but data={data} has "
                              f"{input_dim} features per image")
    if layers[-1][0].shape[0] != classes:
        raise CheckpointError(f"{where}: the network has {layers[-1][0].shape[0]} outputs but data={data} has "
                              f"{classes} classes")
