"""``parent=module``: the user's own ``nn.Module`` class and its trained weights as the parent.

``parent.model`` names the class (``_target_``, any importable ``nn.Module`` class or factory) and
its arguments; :func:`read_model` builds it with ``hydra.utils.instantiate``, loads
``parent.weights`` (a state dict, read with ``torch.load(weights_only=True)``: nothing pickled
runs) strictly, puts it in evaluation mode and exports it with ``torch.export.export`` on one
zero image of the data's shape. The exported program is saved to bytes and read by the same
graph reader as a user's ``.pt2`` (:mod:`ecomp.nets.export_graph`, :mod:`ecomp.nets.export_resnet`),
so the parent is a chain or a ResNet exactly as that file would be, and whatever the reader
refuses is refused here. The module's own ``forward`` runs once, inside the export, on zeros.
Every problem is one :class:`CheckpointError` line naming ``parent.model._target_``,
``parent.weights`` or ``parent.model``, before any run is created.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ecomp.errors import CheckpointError
from ecomp.nets.checkpoint import load_state, read_bytes
from ecomp.nets.export import export_net
from ecomp.nets.pt2 import read_archive
from ecomp.nets.structure import Structure


@dataclass(frozen=True)
class ModelSource:
    """What a ``parent=module`` parent is read from (picklable: a sweep's jobs read it again)."""
    config: str                       # parent.model as sorted JSON: what instantiate builds
    weights: str                      # parent.weights
    image: tuple[int, ...]            # the data's image shape (C, H, W) it is exported on

    @classmethod
    def of(cls, model: Mapping[str, Any], weights: str, image: tuple[int, ...]) -> "ModelSource":
        return cls(json.dumps(model, sort_keys=True), str(weights), tuple(int(s) for s in image))

    @property
    def target(self) -> str:
        return json.loads(self.config)["_target_"]

    def read(self) -> tuple[Structure, str]:
        return read_model(json.loads(self.config), self.weights, self.image)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def locate(path: str) -> object:
    """The object an import path names (``torchvision.models.resnet18``); ``ImportError`` saying why not."""
    parts = path.split(".")
    if not all(p.isidentifier() for p in parts):
        raise ImportError("not a dotted import path")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name != name and not name.startswith(exc.name + "."):
                raise ImportError(f"importing {name} needs {exc.name!r}, which is not installed") from None
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise ImportError(f"module {name!r} has no {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module named {parts[0]!r}")


def build_model(model: Mapping[str, Any]) -> nn.Module:
    """``parent.model`` instantiated (its ``_target_`` imported and called with its arguments)."""
    from hydra.utils import instantiate

    target = model.get("_target_")
    key = f"parent.model._target_={target!r}"
    try:
        obj = locate(str(target))
    except Exception as exc:  # noqa: BLE001 - an import runs the module's code: any error is the user's
        raise CheckpointError(f"{key}: cannot be imported ({_line(exc)}); name an nn.Module class the run's "
                              f"Python can import, e.g. torchvision.models.resnet18") from None
    if not callable(obj):
        raise CheckpointError(f"{key}: is a {type(obj).__name__}, not an nn.Module class or a function that makes one")
    try:
        module = instantiate(dict(model))
    except Exception as exc:  # noqa: BLE001 - the user's constructor
        raise CheckpointError(f"parent.model: {target}({', '.join(f'{k}={v!r}' for k, v in model.items() if k != '_target_')}) "
                              f"failed: {_line(exc.__cause__ or exc)}") from None
    if not isinstance(module, nn.Module):
        raise CheckpointError(f"{key}: made a {type(module).__name__}, not a torch.nn.Module")
    return module


def load_weights(module: nn.Module, weights: str, target: str) -> str:
    """Load the state dict at ``weights`` into ``module`` strictly; the sha256 of its bytes."""
    path = Path(weights).expanduser()
    where = f"parent.weights={str(path)!r}"
    data = read_bytes(path, where)
    state = load_state(data, where)
    want = module.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} (the model's {tuple(want[k].shape)})" for k in want
              if k in state and state[k].shape != want[k].shape]
    problems = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                for what, v in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("shapes that differ", shapes)) if v]
    if problems:
        raise CheckpointError(f"{where}: does not fit parent.model {target}: {'; '.join(problems)}")
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - a module's own loading hooks
        raise CheckpointError(f"{where}: does not load into parent.model {target} ({_line(exc)})") from None
    return hashlib.sha256(data).hexdigest()


def read_model(model: Mapping[str, Any], weights: str, image: tuple[int, ...]) -> tuple[Structure, str]:
    """The network ``parent.model`` with ``parent.weights`` holds, read through its exported graph, and
    the sha256 of the weights' bytes."""
    target = str(model.get("_target_"))
    module = build_model(model)
    sha = load_weights(module, weights, target)
    module.eval()
    shape = "x".join(map(str, image))
    try:
        program = torch.export.export(module, (torch.zeros(1, *image),))
        buf = io.BytesIO()
        torch.export.save(program, buf)
    except Exception as exc:  # noqa: BLE001 - whatever torch.export or the module's forward raises
        raise CheckpointError(f"parent.model: {target} cannot be exported by torch.export on a {shape} image of the "
                              f"data ({_line(exc)})") from None
    where = f"parent.model={target}"
    return export_net(read_archive(buf.getvalue(), where), where), sha
