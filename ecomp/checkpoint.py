"""A user's trained network as the parent (``parent=checkpoint parent.path=...``), read safely.

Accepted:

* the ``state_dict()`` of an ``nn.Sequential`` of (optionally ``Flatten``,) ``Linear``
  and ``ReLU`` layers, as ``torch.save(model.state_dict(), path)`` writes it (keys
  ``"<index>.weight"`` and ``"<index>.bias"``; a Linear without bias reads as zero
  bias), which includes the networks this project saves (``best_network.pt``);
* a ``torch.export`` program (``.pt2``) of such a model, whose graph is checked to
  hold only linear, ReLU and flatten/reshape operations.

A state dict holds no activations: a ReLU between consecutive linear layers is
assumed, as in every network this tool builds. Files are loaded with
``weights_only=True``, so nothing pickled is executed. Every problem is one
:class:`CheckpointError` line naming the file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch

from .config import ConfigError
from .network import Layers

_KEY = re.compile(r"^(\d+)\.(weight|bias)$")
# torch.export graph operations a Flatten -> (Linear -> ReLU)* -> Linear model may hold.
_EXPORT_OPS = {"linear", "relu", "view", "reshape", "flatten", "_unsafe_view", "t", "addmm", "mm", "permute",
               "expand", "clone", "contiguous", "alias", "add", "relu_"}


class CheckpointError(ConfigError):
    """The checkpoint cannot be used as a parent; the message is one line naming the file."""


def digest(path: Path) -> str:
    """sha256 of the file's bytes (the run's config hash includes it: new weights, new runs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> Layers:
    """The ``(weight, bias)`` pairs of the network in ``path`` (float32, CPU)."""
    path = Path(path).expanduser()
    where = f"parent.path={str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{where}: no such file")
    if path.suffix == ".pt2":
        state = _export_state(path, where)
    else:
        state = _load_state(path, where)
    return _layers(state, where)


def _load_state(path: Path, where: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(f"{where}: the file holds pickled Python objects ({found.group(1)}; e.g. a whole "
                                  f"model saved with torch.save(model)), which are not loaded for safety; save "
                                  f"model.state_dict() instead") from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(exc))
        text = (detail.group(1) if detail else (str(exc) or type(exc).__name__)).strip().splitlines()[0]
        raise CheckpointError(f"{where}: not a readable PyTorch file ({text})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where}: expected a state dict (names -> tensors), found {type(state).__name__}")
    return state


def _export_state(path: Path, where: str) -> dict:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{where}: not a readable torch.export program ({str(exc).splitlines()[0]})") from None
    for node in program.graph.nodes:
        if node.op == "call_function":
            op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
            if op not in _EXPORT_OPS:
                raise CheckpointError(f"{where}: the program computes {op!r}; only Linear and ReLU layers "
                                      f"(and a Flatten) are supported")
    state = program.state_dict
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
