"""The convolutional layer kind: sequential CNNs of Conv2d, ReLU, pooling, Flatten and Linear.

A :class:`ConvNet` is a :class:`ConvPlan` (the input's shape and, per weight layer, a
:class:`Stage`: its kind, units, kernel, stride, padding and the pooling after it) and the
``(weight, bias)`` pairs of its weight layers (conv weights ``(out, in, k, k)``, linear
``(out, in)``). Every stage but the last is followed by a ReLU, then its pooling; a Flatten
sits before the first linear stage. The last stage is the classifier, never pruned.

BatchNorm is folded into the convolution before it when a network is read or trained
(:func:`fold_batchnorm`): in evaluation a BatchNorm is a per-channel affine map, so
``conv -> BN`` is exactly one convolution with scaled filters and a shifted bias (up to float
rounding). A network is then only convolutions and biases, and crossover, mutation and the
pruning baselines need no BatchNorm state: a channel is its filter and its bias.

A *unit* is a stage's output channel (conv) or neuron (linear). The input of the network takes
flat images ``(n, C*H*W)``, as every dataset here gives them; the module form starts with an
``Unflatten``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecomp.nets.sizes import SIZES
from ecomp.nets.structure import Chain, Layers

POOLS = ("max", "avg")
FEATURES = ("flat", "pooled")          # similarity.features: a conv stage's maps flattened, or averaged per channel


@dataclass(frozen=True)
class Stage:
    kind: str                  # conv | linear
    out: int                   # units: output channels or neurons
    kernel: int = 1            # conv only: square kernel size
    stride: int = 1
    padding: int = 0
    pool: str | None = None    # max | avg | None, after the ReLU
    pool_size: int = 1         # pooling window = its stride


@dataclass(frozen=True)
class ConvPlan:
    in_shape: tuple[int, int, int]       # (channels, height, width) of one image
    stages: tuple[Stage, ...]
    kind: ClassVar[str] = "cnn"

    @property
    def classes(self) -> int:
        return self.stages[-1].out

    @property
    def features(self) -> int:
        """Features of one flat input image (``C x H x W``)."""
        c, h, w = self.in_shape
        return c * h * w

    @property
    def units(self) -> tuple[int, ...]:
        """Units of every prunable stage (all but the classifier)."""
        return tuple(s.out for s in self.stages[:-1])

    def with_units(self, units: tuple[int, ...]) -> "ConvPlan":
        """The same structure with ``units[l]`` units in prunable stage ``l`` (plans are immutable,
        so one object per plan and units is kept: a run asks for the same few hundreds of times
        per generation)."""
        return _with_units(self, tuple(int(u) for u in units))

    def maps(self) -> list[tuple[int, int, int]]:
        """Per stage: ``(units, height, width)`` of its output before its pooling (``1, 1`` for linear)."""
        _, h, w = self.in_shape
        out = []
        for s in self.stages:
            if s.kind == "conv":
                h = (h + 2 * s.padding - s.kernel) // s.stride + 1
                w = (w + 2 * s.padding - s.kernel) // s.stride + 1
                out.append((s.out, h, w))
                h, w = h // s.pool_size, w // s.pool_size
            else:
                out.append((s.out, 1, 1))
        return out

    def flat_size(self) -> int:
        """Pixels per channel that reach the first linear stage (after the last conv's pooling)."""
        _, h, w = self.in_shape
        for s, (_, mh, mw) in zip(self.stages, self.maps()):
            if s.kind == "linear":
                break
            h, w = mh // s.pool_size, mw // s.pool_size
        return h * w

    def inputs(self) -> list[int]:
        """Per stage: its weight's inputs (second dimension): a convolution's input channels, a
        linear stage's features (the flattened maps for the first one after a convolution)."""
        out, c_in, flattened = [], self.in_shape[0], False
        for s in self.stages:
            if s.kind == "linear" and not flattened:
                c_in, flattened = c_in * self.flat_size(), True
            out.append(c_in)
            c_in = s.out
        return out

    def problems(self) -> str | None:
        """Why this plan cannot run (one phrase), or None."""
        if not self.stages or self.stages[-1].kind != "linear":
            return "the last layer must be a Linear classifier"
        kinds = [s.kind for s in self.stages]
        if "conv" in kinds[kinds.index("linear"):]:
            return "a convolution after a Linear layer is not supported"
        for i, (s, (_, h, w)) in enumerate(zip(self.stages, self.maps())):
            if s.kind != "conv":
                continue
            if h < 1 or w < 1:
                return f"layer {i} (conv, kernel {s.kernel}) shrinks the image below 1 pixel"
            if s.pool and (h // s.pool_size < 1 or w // s.pool_size < 1):
                return f"the {s.pool_size}x{s.pool_size} pooling after layer {i} shrinks the {h}x{w} image below 1 pixel"
        return None

    def to_dict(self) -> dict:
        return {"in_shape": list(self.in_shape), "stages": [asdict(s) for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict) -> "ConvPlan":
        return cls(tuple(int(v) for v in d["in_shape"]), tuple(Stage(**s) for s in d["stages"]))

    @property
    def feature_layers(self) -> int:
        return len(self.units)

    # the blueprint interface (ecomp.nets.structure.Blueprint)
    def build(self, batchnorm: bool = False) -> nn.Sequential:
        return build_module(self, batchnorm)

    def net(self, layers: Layers) -> "ConvNet":
        """The network of this structure holding ``layers`` (units read from their rows)."""
        return ConvNet(self.with_units(tuple(w.shape[0] for w, _ in layers[:-1])), layers)

    def size(self, kind: str) -> int:
        return plan_size(self, kind)

    def network(self, model: nn.Module) -> "ConvNet":
        return from_module(model, self)

    def matches(self, net) -> bool:
        return net.kind == ConvNet.kind and net.plan == self

    def cache_key(self, recipe: dict[str, Any]) -> dict[str, Any]:
        return {**recipe, "arch": {"cnn": self.to_dict()}}


@dataclass
class ConvNet(Chain):
    """A network of this layer kind: its plan and its weights, on one device (implements
    :class:`ecomp.nets.structure.Structure`)."""
    kind: ClassVar[str] = "cnn"
    plan: ConvPlan
    layers: Layers

    def __post_init__(self) -> None:
        got = tuple(w.shape[0] for w, _ in self.layers)
        want = tuple(s.out for s in self.plan.stages)
        if got != want:
            raise ValueError(f"weights with units {got} do not match the plan's {want}")

    @property
    def units(self) -> tuple[int, ...]:
        return self.plan.units

    @property
    def classes(self) -> int:
        return self.plan.classes

    @property
    def in_features(self) -> int:
        return self.plan.features

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.plan.in_shape

    def with_layers(self, layers: Layers) -> "ConvNet":
        return ConvNet(self.plan.with_units(tuple(w.shape[0] for w, _ in layers[:-1])), layers)

    def input_columns(self, layer: int, kept: Tensor) -> Tensor:
        """The same channels for a convolution or a linear layer after a linear one; each kept
        channel's block of ``height x width`` columns for the first linear layer after the Flatten."""
        s, before = self.plan.stages[layer], self.plan.stages[layer - 1]
        if s.kind == "linear" and before.kind == "conv":
            hw = self.plan.flat_size()
            return (kept.view(-1, 1) * hw + torch.arange(hw, device=kept.device)).flatten()
        return kept

    def crossover_blocks(self, cuts: list[int]) -> list[tuple[int, int]]:
        return [(c, self.block_columns(l, c)) for l, c in enumerate(cuts)]

    def block_columns(self, layer: int, cut: int) -> int:
        """A first convolution has at most its image's channels as inputs (all of them when it has
        fewer than ``cut``); after the Flatten a unit spans its channel's ``height x width`` block."""
        s = self.plan.stages[layer]
        if layer == 0:
            return min(cut, self.plan.in_shape[0]) if s.kind == "conv" else cut
        if s.kind == "linear" and self.plan.stages[layer - 1].kind == "conv":
            return cut * self.plan.flat_size()
        return cut

    def size(self, kind: str) -> int:
        return plan_size(self.plan, kind)

    def activation_floats(self) -> int:
        return max(u * h * w for u, h, w in self.plan.maps())

    def run(self, x: Tensor, features: str | None = None) -> tuple[Tensor, list[Tensor]]:
        return run(self, x, features)

    def to_module(self, batchnorm: bool = False) -> nn.Sequential:
        return to_module(self, batchnorm)

    def from_module(self, model: nn.Module) -> "ConvNet":
        return from_module(model, self.plan)

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "plan": self.plan.to_dict()}

    def blueprint(self) -> ConvPlan:
        return self.plan

    def settings(self) -> dict[str, Any]:
        stages = self.plan.stages
        return {"kind": self.kind, "channels": [s.out for s in stages if s.kind == "conv"],
                "hidden": [s.out for s in stages[:-1] if s.kind == "linear"], "input_dim": self.in_features,
                "classes": self.classes}

    @staticmethod
    def blueprint_for(image: tuple[int, ...], classes: int, settings: Mapping[str, Any]) -> ConvPlan:
        """``parent=cnn``'s plan on the data's images: LeNet-5's shape with the settings' sizes."""
        return lenet5(tuple(image), settings.get("classes") or classes, tuple(settings["channels"]),
                      settings["kernel"], tuple(settings.get("padding") or ()), settings["pool"],
                      tuple(settings["hidden"]))

    @staticmethod
    def settings_problem(settings: Mapping[str, Any]) -> tuple[str, Any, str] | None:
        """The first ``parent.*`` setting of a CNN the tool trains that is out of range, as
        ``(key, value, allowed)``."""
        from ecomp.nets.mlp import hidden_problem

        if hidden_problem(settings):
            return hidden_problem(settings)
        channels = list(settings.get("channels") or [])
        if not channels or any(c < 1 for c in channels):
            return "parent.channels", channels, "a non-empty list of positive channel counts, e.g. [6, 16]"
        kernel = settings.get("kernel")
        if kernel is None or kernel < 1:
            return "parent.kernel", kernel, "an integer >= 1 (the square kernel of every convolution)"
        padding = list(settings.get("padding") or [])
        if len(padding) > len(channels) or any(v < 0 for v in padding):
            return "parent.padding", padding, f"at most {len(channels)} integers >= 0, one per convolution"
        pool = settings.get("pool")
        if pool is None or pool < 1:
            return "parent.pool", pool, "an integer >= 1 (the max-pooling window after each convolution; 1 = none)"
        return None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], layers: Layers) -> "ConvNet":
        net = cls(ConvPlan.from_dict(meta["plan"]), layers)
        if net.plan.problems() or params(net.plan) != sum(w.numel() + b.numel() for w, b in layers):
            raise ValueError("the weights do not fit the plan in its .json")
        return net


def lenet5(in_shape: tuple[int, int, int], classes: int, channels=(6, 16), kernel: int = 5, padding=(2, 0),
           pool: int = 2, hidden=(120, 84), pool_kind: str = "max") -> ConvPlan:
    """LeNet-5's plan (conv 6 and 16 channels 5x5, ReLU, 2x2 max-pool; hidden 120 and 84), any sizes."""
    pads = list(padding) + [0] * (len(channels) - len(padding))
    stages = [Stage("conv", c, kernel, 1, pads[i], pool_kind if pool > 1 else None, pool) for i, c in enumerate(channels)]
    stages += [Stage("linear", h) for h in hidden] + [Stage("linear", classes)]
    return ConvPlan(tuple(in_shape), tuple(stages))


def build_module(plan: ConvPlan, batchnorm: bool = False) -> nn.Sequential:
    """``Unflatten -> (Conv [-> BN] -> ReLU [-> Pool])* -> Flatten -> (Linear -> ReLU)* -> Linear``."""
    mods: list[nn.Module] = [nn.Unflatten(1, plan.in_shape)]
    flattened = False
    for i, (s, n_in) in enumerate(zip(plan.stages, plan.inputs())):
        if s.kind == "conv":
            mods.append(nn.Conv2d(n_in, s.out, s.kernel, s.stride, s.padding))
            if batchnorm:
                mods.append(nn.BatchNorm2d(s.out))
        else:
            if not flattened:
                mods.append(nn.Flatten())
                flattened = True
            mods.append(nn.Linear(n_in, s.out))
        if i < len(plan.stages) - 1:
            mods.append(nn.ReLU())
            if s.pool:
                mods.append((nn.MaxPool2d if s.pool == "max" else nn.AvgPool2d)(s.pool_size))
    return nn.Sequential(*mods)


def weight_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def fold_batchnorm(model: nn.Sequential) -> Layers:
    """The ``(weight, bias)`` pairs of ``model``'s conv and linear layers, every BatchNorm2d folded
    exactly into the convolution before it (its evaluation-mode affine map)."""
    layers: Layers = []
    mods = list(model)
    for i, m in enumerate(mods):
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        w = m.weight.detach().clone()
        b = m.bias.detach().clone() if m.bias is not None else w.new_zeros(w.shape[0])
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(nxt, nn.BatchNorm2d):
            scale = nxt.weight / torch.sqrt(nxt.running_var + nxt.eps)
            w = w * scale.view(-1, 1, 1, 1)
            b = (b - nxt.running_mean) * scale + nxt.bias
        layers.append((w.contiguous(), b.contiguous()))
    return layers


def to_module(net: ConvNet, batchnorm: bool = False) -> nn.Sequential:
    """A fresh module holding copies of ``net``'s weights. Its BatchNorm was folded when it was
    read; ``batchnorm=True`` puts an identity BatchNorm after each convolution (mean 0, variance
    ``1 - eps``, scale 1, shift 0), for a method that recalibrates or trains it."""
    model = build_module(net.plan, batchnorm)
    with torch.no_grad():
        for m, (w, b) in zip(weight_modules(model), net.layers):
            m.weight.copy_(w)
            m.bias.copy_(b)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(1.0 - m.eps)
    return model.to(net.layers[0][0].device)


def from_module(model: nn.Module, plan: ConvPlan) -> ConvNet:
    """The network a module built by :func:`build_module` holds (units read from its weights)."""
    layers = fold_batchnorm(model)
    return ConvNet(plan.with_units(tuple(w.shape[0] for w, _ in layers[:-1])), layers)


def _stage(plan: ConvPlan, i: int, h: Tensor, w: Tensor, b: Tensor, flat_before: bool) -> Tensor:
    s = plan.stages[i]
    if s.kind == "conv":
        return F.conv2d(h, w, b, s.stride, s.padding)
    if flat_before:
        h = h.flatten(1)
    return torch.addmm(b, h, w.T)


def max_pool(h: Tensor, k: int, out: Tensor | None = None) -> Tensor:
    """``F.max_pool2d(h, k)`` (``(n, c, H, W)`` maps, any memory format) as ``k * k - 1``
    elementwise maxima of strided slices: the same values (a maximum rounds nothing, and NaNs
    propagate as there), at memory speed, where ``F.max_pool2d`` on NCHW maps runs 10x slower
    (0.33 against 4.3 ms on 445 LeNet-5 maps of 6 x 28 x 28, ``benchmarks/README.md``). ``out``: an
    ``(n, c, H / k, W / k)`` to write into."""
    v = h[:, :, :h.shape[2] // k * k, :h.shape[3] // k * k]
    rows = v[:, :, 0::k]
    for i in range(1, k):
        rows = torch.maximum(rows, v[:, :, i::k])
    if k == 1:
        return rows if out is None else out.copy_(rows)
    first = torch.maximum(rows[..., 0::k], rows[..., 1::k], out=out)
    for j in range(2, k):
        torch.maximum(first, rows[..., j::k], out=first)
    return first


def _after(plan: ConvPlan, i: int, h: Tensor) -> Tensor:
    s = plan.stages[i]
    if s.pool == "max":
        return max_pool(h, s.pool_size)
    if s.pool == "avg":
        return F.avg_pool2d(h, s.pool_size)
    return h


def features_of(a: Tensor, features: str) -> Tensor:
    """A stage's output as one row per image: flat, or averaged over each channel's map. (The
    similarity's distances do not depend on the order of the features.)"""
    if a.dim() == 2:
        return a
    return a.flatten(1) if features == "flat" else a.mean((2, 3))


@torch.no_grad()
def run(net: ConvNet, x: Tensor, features: str | None = None) -> tuple[Tensor, list[Tensor]]:
    """Logits ``(n, classes)`` of flat images ``x`` by a plain layer-by-layer pass, and (when
    ``features`` is given) every prunable stage's output (after its ReLU and pooling: what the
    next layer reads) as rows per image."""
    plan, h = net.plan, x.view(x.shape[0], *net.plan.in_shape)
    acts: list[Tensor] = []
    last = len(net.layers) - 1
    for i, (w, b) in enumerate(net.layers):
        h = _stage(plan, i, h, w, b, h.dim() == 4)
        if i < last:
            h = _after(plan, i, h.relu())
            if features is not None:
                acts.append(features_of(h, features))
    return h, acts


def macs(plan: ConvPlan) -> int:
    """Multiply-accumulates of one image's forward pass (convolutions and linear layers)."""
    return sum(s.out * n_in * (s.kernel * s.kernel * h * w if s.kind == "conv" else 1)
               for s, n_in, (_, h, w) in zip(plan.stages, plan.inputs(), plan.maps()))


@functools.lru_cache(maxsize=4096)
def _with_units(plan: ConvPlan, units: tuple[int, ...]) -> ConvPlan:
    return replace(plan, stages=tuple(replace(s, out=u) for s, u in zip(plan.stages, units)) + plan.stages[-1:])


@functools.lru_cache(maxsize=4096)
def plan_size(plan: ConvPlan, kind: str) -> int:
    """The ``kind`` size of a convolutional network of ``plan`` (kept per plan and kind)."""
    if kind == "units":
        return sum(plan.units)
    if kind == "params":
        return params(plan)
    if kind == "macs":
        return macs(plan)
    raise ValueError(f"size kind {kind!r}: one of {', '.join(SIZES)}")


def params(plan: ConvPlan) -> int:
    return sum(s.out * (n_in * (s.kernel * s.kernel if s.kind == "conv" else 1) + 1)
               for s, n_in in zip(plan.stages, plan.inputs()))