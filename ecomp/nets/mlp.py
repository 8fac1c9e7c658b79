"""The fully connected layer kind: ``Flatten -> (Linear -> ReLU)* -> Linear``.

An :class:`MLP` is its ``(weight, bias)`` pairs, weights ``(out, in)`` as in ``torch.nn.Linear``;
its units are the hidden neurons, and a neuron's input column in the next layer is its index.
An :class:`Architecture` (input size, hidden widths, classes) is the kind's blueprint. A
population of MLPs is packed for speed (:class:`ecomp.nets.population.Population`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ecomp.nets.sizes import size as widths_size
from ecomp.nets.structure import Chain, Layers


@dataclass(frozen=True)
class Architecture:
    kind: ClassVar[str] = "mlp"
    input_dim: int
    hidden: tuple[int, ...]
    classes: int

    @property
    def widths(self) -> tuple[int, ...]:
        """All layer sizes from input to output."""
        return (self.input_dim, *self.hidden, self.classes)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "hidden": list(self.hidden)})

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        d = json.loads(text)
        return cls(int(d["input_dim"]), tuple(int(h) for h in d["hidden"]), int(d["classes"]))

    # the blueprint interface (ecomp.nets.structure.Blueprint)
    @property
    def units(self) -> tuple[int, ...]:
        return self.hidden

    @property
    def feature_layers(self) -> int:
        return len(self.hidden)

    def with_units(self, units: tuple[int, ...]) -> "Architecture":
        return Architecture(self.input_dim, tuple(units), self.classes)

    def problems(self) -> str | None:
        return None

    def build(self, batchnorm: bool = False) -> nn.Sequential:
        """``Flatten -> (Linear -> ReLU) * len(hidden) -> Linear`` (no BatchNorm in an MLP)."""
        mods: list[nn.Module] = [nn.Flatten()]
        widths = self.widths
        for i in range(len(widths) - 1):
            mods.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)

    def net(self, layers: Layers) -> "MLP":
        return MLP(layers)

    def size(self, kind: str) -> int:
        return widths_size(self.widths, kind)

    def network(self, model: nn.Module) -> "MLP":
        return MLP([(w.clone(), b.clone()) for w, b in layers_of(model)])

    def matches(self, net) -> bool:
        return net.kind == MLP.kind and architecture_of(net.layers) == self

    def cache_key(self, recipe: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in recipe.items() if k != "batchnorm"},
                "arch": {**asdict(self), "hidden": list(self.hidden)}}


def hidden_problem(settings: Mapping[str, Any]) -> tuple[str, Any, str] | None:
    """``parent.hidden`` out of range, as ``(key, value, allowed)`` (an MLP's and a CNN's Linear widths)."""
    hidden = list(settings.get("hidden") or [])
    if not hidden or any(h < 1 for h in hidden):
        return "parent.hidden", hidden, "a non-empty list of positive widths, e.g. [300, 100]"
    return None


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def layers_of(model: nn.Module) -> Layers:
    """The ``(weight, bias)`` pairs of a model's linear layers (detached)."""
    return [(m.weight.detach(), m.bias.detach()) for m in linear_layers(model)]


def architecture_of(layers: Layers) -> Architecture:
    ws = [w for w, _ in layers]
    return Architecture(ws[0].shape[1], tuple(w.shape[0] for w in ws[:-1]), ws[-1].shape[0])


@dataclass
class MLP(Chain):
    """A fully connected network (implements :class:`ecomp.nets.structure.Structure`)."""
    kind: ClassVar[str] = "mlp"
    layers: Layers

    @property
    def units(self) -> tuple[int, ...]:
        return tuple(w.shape[0] for w, _ in self.layers[:-1])

    @property
    def classes(self) -> int:
        return self.layers[-1][0].shape[0]

    @property
    def in_features(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    @property
    def widths(self) -> tuple[int, ...]:
        """``(input, *hidden, classes)``."""
        return (self.in_features, *self.units, self.classes)

    def with_layers(self, layers: Layers) -> "MLP":
        return MLP(layers)

    def input_columns(self, layer: int, kept: Tensor) -> Tensor:
        return kept

    def crossover_blocks(self, cuts: list[int]) -> list[tuple[int, int]]:
        return [(c, c) for c in cuts]

    def size(self, kind: str) -> int:
        return widths_size(self.widths, kind)

    def activation_floats(self) -> int:
        return max(w.shape[0] for w, _ in self.layers)

    @torch.no_grad()
    def run(self, x: Tensor, features: str | None = None) -> tuple[Tensor, list[Tensor]]:
        h, acts = x, []
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            h = torch.addmm(b, h, w.T)
            if i < last:
                h = h.relu()
                if features is not None:
                    acts.append(h)
        return h, acts

    def to_module(self, batchnorm: bool = False) -> nn.Sequential:
        model = architecture_of(self.layers).build()
        with torch.no_grad():
            for lin, (w, b) in zip(linear_layers(model), self.layers):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
        return model.to(self.layers[0][0].device)

    def from_module(self, model: nn.Module) -> "MLP":
        return MLP([(w.clone(), b.clone()) for w, b in layers_of(model)])

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, **json.loads(architecture_of(self.layers).to_json())}

    def blueprint(self) -> Architecture:
        return architecture_of(self.layers)

    def settings(self) -> dict[str, Any]:
        return {"input_dim": self.in_features, "hidden": list(self.units), "classes": self.classes}

    @staticmethod
    def blueprint_for(image: tuple[int, ...], classes: int, settings: Mapping[str, Any]) -> Architecture:
        """``parent=mlp``'s widths: ``parent.hidden`` between the image's features (or
        ``parent.input_dim``) and its classes (or ``parent.classes``)."""
        features = settings.get("input_dim") or math.prod(image)
        return Architecture(features, tuple(settings["hidden"]), settings.get("classes") or classes)

    @staticmethod
    def settings_problem(settings: Mapping[str, Any]) -> tuple[str, Any, str] | None:
        """``parent.hidden``, the widths of the hidden layers."""
        return hidden_problem(settings)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], layers: Layers) -> "MLP":
        """The MLP of a saved state dict's pairs (its shapes are the architecture; ``meta`` adds nothing)."""
        for i, (w, b) in enumerate(layers):
            if w.dim() != 2 or b.shape != (w.shape[0],) or (i and w.shape[1] != layers[i - 1][0].shape[0]):
                raise ValueError("layer shapes do not chain")
        return cls(layers)
