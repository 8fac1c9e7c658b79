"""A user's trained network as the parent (``parent=checkpoint parent.path=...``), read safely.

Accepted:

* the ``state_dict()`` of an ``nn.Sequential`` of (optionally ``Flatten``,) ``Linear``
  and ``ReLU`` layers, as ``torch.save(model.state_dict(), path)`` writes it: keys
  ``"<index>.weight"`` and ``"<index>.bias"`` (layers in index order), or named ones
  (``"layer_1_linear.weight"``, ``"output.bias"``, ``"features.0.weight"``: an
  ``nn.Sequential`` built from an ``OrderedDict``; layers in the state dict's order, which
  ``torch.save`` keeps). A Linear without bias reads as zero bias. Read as an MLP;
* the networks this project saves (``best_network.pt``): an MLP as above, and a convolutional
  or residual network (4-D weights) whose ``best_network.pt.json`` beside it holds its ``"plan"``;
* a ``torch.export`` program (``.pt2``) of a sequential network of ``Conv2d``,
  ``BatchNorm2d`` (evaluation mode), ``ReLU``, ``MaxPool2d``/``AvgPool2d`` (window = stride,
  no padding), ``Dropout`` (ignored), ``Flatten`` and ``Linear`` layers. Its architecture is
  read from the graph's operations in order (strides, padding, pooling, the input's shape);
  a BatchNorm is folded into the layer before it. With a convolution it reads as a
  :class:`~ecomp.nets.convnet.ConvNet`, without one as an MLP. It is read by
  :mod:`ecomp.nets.pt2`, never by ``torch.export.load`` (which may unpickle members with
  ``weights_only=False``).

A state dict holds no activations: a ReLU between consecutive linear layers is
assumed, as in every network this tool builds; nor does it say a convolution's strides,
padding or pooling, so one with 4-D weights needs the tool's ``.json`` beside it. The file's
bytes are read once; its digest and its weights come from those bytes, and whatever in them
is pickled is loaded with ``weights_only=True`` only, so nothing pickled is executed. Every
problem is one :class:`CheckpointError` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from ecomp.errors import CheckpointError
from ecomp.nets.convnet import ConvNet, ConvPlan
from ecomp.nets.resnet import ResNet
from ecomp.nets.mlp import MLP
from ecomp.nets.structure import Layers, Structure
from ecomp.nets.export import export_net
from ecomp.nets.export_graph import SAVE_PT2, pair, shapes
from ecomp.nets.pt2 import looks_pickled, read_archive, refusal_reason, weights_only_load

def read_bytes(path: Path, where: str) -> bytes:
    """The file's bytes; a one-line :class:`CheckpointError` naming ``where`` if it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{where}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot be read ({exc.strerror or exc})") from None


def read_checkpoint(path: str | Path) -> tuple[Structure, str]:
    """The network in ``path`` (float32, CPU): an :class:`MLP` or a :class:`ConvNet`, and the sha256 of the bytes it was read from (the run's config hash
    includes it: new weights, new runs). For the tool's own convolutional file the digest also
    covers the plan read from its ``.json`` (a new plan, new runs)."""
    path = Path(path).expanduser()
    where = f"parent.path={str(path)!r}"
    data = read_bytes(path, where)
    digest = hashlib.sha256(data)
    if path.suffix == ".pt2":
        net: Structure = export_net(read_archive(data, where), where)
    else:
        state = load_state(data, where)
        conv = next(((name, t) for name, t in state.items() if t.dim() == 4), None)
        if conv is None:
            net = MLP(_layers(state, where))
        else:
            net = _own_convnet(state, path, conv, where)
            digest.update(b"\0plan:" + json.dumps(net.plan.to_dict(), sort_keys=True).encode())
    return net, digest.hexdigest()


def load_state(data: bytes, where: str) -> dict:
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


# ---- state dicts ---------------------------------------------------------------------------------------------

def _label(prefix: str) -> str:
    """How a layer is named in messages: ``layer 3`` (an index) or ``layer 'features.0'``."""
    return f"layer {prefix}" if prefix.isdigit() else f"layer {prefix!r}"


def _groups(state: dict, where: str) -> list[tuple[str, dict[str, Tensor]]]:
    """The state dict's layers, ``(module name, {"weight": ..., "bias": ...})``: in index order when
    every name is an index, else in the state dict's order."""
    groups: dict[str, dict[str, Tensor]] = {}
    for name, t in state.items():
        prefix, _, kind = str(name).rpartition(".")
        if kind not in ("weight", "bias"):
            guess = " (a BatchNorm?)" if kind in ("running_mean", "running_var", "num_batches_tracked") else ""
            raise CheckpointError(f"{where}: entry {name!r} is not a Linear layer's weight or bias{guess}; "
                                  f"only an nn.Sequential of Linear and ReLU layers is supported")
        groups.setdefault(prefix, {})[kind] = t
    if not groups:
        raise CheckpointError(f"{where}: the state dict holds no layers")
    names = list(groups)
    if all(n.isdigit() for n in names):
        names.sort(key=int)
    return [(n, groups[n]) for n in names]


def _layers(state: dict, where: str) -> Layers:
    layers: Layers = []
    for prefix, entry in _groups(state, where):
        label = _label(prefix)
        w = entry.get("weight")
        if w is None or w.dim() != 2:
            shape = "no weight" if w is None else f"a {w.dim()}-D weight {tuple(w.shape)}"
            hint = " (a Conv?)" if w is not None and w.dim() > 2 else (" (a BatchNorm or LayerNorm?)"
                                                                         if w is not None and w.dim() == 1 else "")
            raise CheckpointError(f"{where}: {label} has {shape}{hint}; only Linear and ReLU layers are supported")
        b = entry.get("bias", torch.zeros(w.shape[0], dtype=w.dtype))
        if b.shape != (w.shape[0],):
            raise CheckpointError(f"{where}: {label}'s bias has shape {tuple(b.shape)}, expected ({w.shape[0]},)")
        if layers and w.shape[1] != layers[-1][0].shape[0]:
            raise CheckpointError(f"{where}: {label} takes {w.shape[1]} inputs but the layer before gives "
                                  f"{layers[-1][0].shape[0]}")
        layers.append(pair(w, b, label, where))
    if len(layers) < 2:
        raise CheckpointError(f"{where}: a single linear layer has no hidden layer to compress (at least 2 needed)")
    return layers


def _own_convnet(state: dict, path: Path, conv: tuple[str, Tensor], where: str) -> ConvNet:
    """The tool's own convolutional network file: the weights, and the plan in the ``.json`` beside it."""
    meta_path = path.with_suffix(path.suffix + ".json")
    name, w = conv
    first = f"{_label(name.rpartition('.')[0])} has a 4-D weight {tuple(w.shape)} (a Conv?)"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{where}: {first}; a state dict does not say a convolution's strides, padding or "
                              f"pooling: {SAVE_PT2}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {meta_path.name} beside it is not readable JSON "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(meta, dict) or "plan" not in meta:
        raise CheckpointError(f"{where}: {first} but {meta_path.name} beside it holds no \"plan\"; a state dict "
                              f"does not say a convolution's strides, padding or pooling: {SAVE_PT2}")
    if meta.get("kind") == ResNet.kind:
        return _own_resnet(state, meta, meta_path.name, where)
    try:
        plan = ConvPlan.from_dict(meta["plan"])
        if not all(isinstance(s.kind, str) and isinstance(s.out, int) for s in plan.stages):
            raise TypeError("stage fields")
        problem = plan.problems()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where}: the \"plan\" in {meta_path.name} is not a network plan ({exc})") from None
    if problem:
        raise CheckpointError(f"{where}: the plan in {meta_path.name} cannot run: {problem}")
    groups = _groups(state, where)
    if len(groups) != len(plan.stages):
        raise CheckpointError(f"{where}: the file holds {len(groups)} layers but the plan in {meta_path.name} has "
                              f"{len(plan.stages)}")
    layers: Layers = []
    for (prefix, entry), (ws, bs), stage in zip(groups, shapes(plan), plan.stages):
        label = _label(prefix)
        w, b = entry.get("weight"), entry.get("bias")
        for what, t, want in (("weight", w, ws), ("bias", b, bs)):
            if t is None:
                raise CheckpointError(f"{where}: {label} has no {what}")
            if tuple(t.shape) != want:
                raise CheckpointError(f"{where}: {label}'s {what} has shape {tuple(t.shape)} but the plan in "
                                      f"{meta_path.name} needs {want} (a {stage.kind} layer)")
        layers.append(pair(w, b, label, where))
    return ConvNet(plan, layers)


def _own_resnet(state: dict, meta: dict, meta_name: str, where: str) -> ResNet:
    """The tool's own residual network file: its layers in order, fitted to the plan in its ``.json``."""
    layers: Layers = []
    for prefix, entry in _groups(state, where):
        w, b = entry.get("weight"), entry.get("bias")
        if w is None or b is None:
            raise CheckpointError(f"{where}: {_label(prefix)} has no {'weight' if w is None else 'bias'}")
        layers.append(pair(w, b, _label(prefix), where))
    try:
        return ResNet.from_meta(meta, layers)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: the residual network in {meta_name} does not fit its weights ({exc})") from None


def check_fits(net: Structure, where: str, input_dim: int, classes: int, data: str) -> None:
    """The network takes the data's features and outputs one score per class."""
    takes, gives = net.in_features, net.classes
    images = f" ({'x'.join(map(str, net.in_shape))} images)" if len(net.in_shape) > 1 else ""
    if takes != input_dim:
        raise CheckpointError(f"{where}: the network takes {takes} inputs{images} but data={data} has "
                              f"{input_dim} features per image")
    if gives != classes:
        raise CheckpointError(f"{where}: the network has {gives} outputs but data={data} has {classes} classes")
