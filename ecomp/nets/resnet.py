"""The residual layer kind: ResNets of basic blocks (He et al. 2016), CIFAR-style or torchvision's.

A :class:`ResPlan` is the input's shape, a stem (a convolution, then optionally a max-pooling
as torchvision's ResNets have), stages of basic blocks (``conv3x3 -> ReLU -> conv3x3``, added
to the block's input or to its 1x1 *projection*, then a ReLU), global average pooling and a
linear classifier. BatchNorm is folded into the convolution before it when a network is read or
trained (exact in evaluation, as :mod:`ecomp.nets.convnet` does), so a :class:`ResNet` is its
plan and one ``(weight, bias)`` pair per convolution and for the classifier, in the order of
:meth:`ResPlan.layout`: stem, then per block ``conv1, conv2[, projection]``, then the classifier.

Its prunable *units* are **channel groups**: channels that must be kept or removed together.
A stage's residual stream is one group across all its blocks (the stem's or the projection's
output, every block's ``conv2`` output and every block's input are the same channels, tied by
the additions); a stage whose first block has no projection continues the stream before it.
Each block's inner channels (``conv1``'s output, ``conv2``'s input) are a group of their own.
These are the groups Torch-Pruning's ``DependencyGraph`` finds on the same module (tested).
``units[g]`` is group ``g``'s width, the groups numbered by their first writer in layer order
(the stem's stream, then per block its inner group and, where a projection starts one, the new
stream). Every layer *writes* one group (its rows; the classifier writes the classes) and
*reads* one (its input channels; the stem reads the image): :meth:`ResNet.layer_groups`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecomp.nets.sizes import SIZES
from ecomp.nets.structure import Layers


@dataclass(frozen=True)
class Conv:
    """One weight layer of the plan: the group it writes, the group it reads (None: the image, or
    for the classifier the classes), and its geometry (the classifier is ``kernel 0``)."""
    writes: int | None
    reads: int | None
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class ResPlan:
    in_shape: tuple[int, int, int]        # (channels, height, width) of one image
    classes: int
    widths: tuple[int, ...]               # units of every channel group, in order of first appearance
    blocks: tuple[int, ...]               # basic blocks per stage
    strides: tuple[int, ...]              # each stage's first block's stride
    projections: tuple[bool, ...]         # each stage's first block has a 1x1 projection (a new stream)
    stem_kernel: int = 3
    stem_stride: int = 1
    stem_padding: int = 1
    stem_pool: int = 0                    # torchvision's 3x3 stride-2 max-pooling after the stem: 3; none: 0

    kind: ClassVar[str] = "resnet"

    @property
    def units(self) -> tuple[int, ...]:
        return self.widths

    @property
    def features(self) -> int:
        c, h, w = self.in_shape
        return c * h * w

    @property
    def feature_layers(self) -> int:
        """What the similarity can read: every block's output."""
        return sum(self.blocks)

    def with_units(self, units: tuple[int, ...]) -> "ResPlan":
        return replace(self, widths=tuple(int(u) for u in units))

    def layout(self) -> tuple[list[Conv], list[tuple[int, int, int | None]]]:
        """The weight layers in storage order, and per block the indices of its ``conv1``, ``conv2``
        and projection (None: the identity shortcut)."""
        convs = [Conv(0, None, self.stem_kernel, self.stem_stride, self.stem_padding)]
        blocks: list[tuple[int, int, int | None]] = []
        stream, groups = 0, 1
        for s, (n, stride, proj) in enumerate(zip(self.blocks, self.strides, self.projections)):
            for b in range(n):
                first = b == 0
                inner, groups = groups, groups + 1
                out = stream
                if first and proj:
                    out, groups = groups, groups + 1
                st = stride if first else 1
                i1 = len(convs)
                convs.append(Conv(inner, stream, 3, st, 1))
                convs.append(Conv(out, inner, 3, 1, 1))
                ip = None
                if first and proj:
                    ip = len(convs)
                    convs.append(Conv(out, stream, 1, st, 0))
                blocks.append((i1, i1 + 1, ip))
                stream = out
        convs.append(Conv(None, stream, 0, 1, 0))
        return convs, blocks

    def n_groups(self) -> int:
        return 1 + sum(n + int(p) for n, p in zip(self.blocks, self.projections))

    def geometry(self) -> list[tuple[int, int, int, int]]:
        """Per layer: ``(out channels, in channels, height, width)`` of its output (1x1 for the classifier)."""
        convs, _ = self.layout()
        c, h, w = self.in_shape
        out, sizes = [], {}
        for i, cv in enumerate(convs):
            n_in = c if cv.reads is None else self.widths[cv.reads]
            if cv.kernel == 0:
                out.append((self.classes, n_in, 1, 1))
                continue
            hin, win = sizes.get(cv.reads, (h, w)) if cv.reads is not None else (h, w)
            ho = (hin + 2 * cv.padding - cv.kernel) // cv.stride + 1
            wo = (win + 2 * cv.padding - cv.kernel) // cv.stride + 1
            if i == 0 and self.stem_pool:
                sizes[0] = ((ho + 2 - 3) // 2 + 1, (wo + 2 - 3) // 2 + 1)
            else:
                sizes[cv.writes] = (ho, wo)
            out.append((self.widths[cv.writes], n_in, ho, wo))
        return out

    def problems(self) -> str | None:
        """Why this plan cannot run (one phrase), or None."""
        if len(self.widths) != self.n_groups():
            return f"{len(self.widths)} group widths for a plan of {self.n_groups()} groups"
        if any(u < 1 for u in self.widths):
            return "every channel group needs at least one channel"
        if any(h < 1 or w < 1 for _, _, h, w in self.geometry()):
            return f"the {self.in_shape[1]}x{self.in_shape[2]} images shrink below 1 pixel in the last stage"
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ResPlan":
        tup = {"in_shape", "widths", "blocks", "strides", "projections"}
        return cls(**{k: tuple(v) if k in tup else v for k, v in d.items()})

    # the blueprint interface (ecomp.nets.structure.Blueprint)
    def build(self, batchnorm: bool = False) -> "ResNetModule":
        return ResNetModule(self, batchnorm)

    def network(self, model: nn.Module) -> "ResNet":
        return ResNet(self, fold(model))

    def net(self, layers: Layers) -> "ResNet":
        return ResNet(self.with_units(units_of(self, layers)), layers)

    def size(self, kind: str) -> int:
        return plan_size(self, kind)

    def matches(self, net) -> bool:
        return net.kind == ResNet.kind and net.plan == self

    def cache_key(self, recipe: dict[str, Any]) -> dict[str, Any]:
        return {**recipe, "arch": {"resnet": self.to_dict()}}


def units_of(plan: ResPlan, layers: Layers) -> tuple[int, ...]:
    """Each group's width, read from the rows of the layers that write it."""
    widths = list(plan.widths)
    for cv, (w, _) in zip(plan.layout()[0], layers):
        if cv.writes is not None:
            widths[cv.writes] = int(w.shape[0])
    return tuple(widths)


def cifar_resnet(in_shape: tuple[int, int, int], classes: int, depth: int = 8,
                 widths: tuple[int, ...] = (16, 32, 64)) -> ResPlan:
    """He et al.'s CIFAR ResNet (depth ``6n + 2``): a 3x3 stem, three stages of ``n`` basic blocks
    of ``widths`` channels (stride 2 and a 1x1 projection where a stage starts narrower or
    smaller), global average pooling, the classifier. Every block's inner width is its stage's."""
    n = (depth - 2) // 6
    stages = len(widths)
    projections = tuple(s > 0 for s in range(stages))
    group_widths = [widths[0]]
    for s, w in enumerate(widths):
        group_widths += [w] * (n + int(projections[s]))
    return ResPlan(tuple(in_shape), classes, tuple(group_widths), (n,) * stages,
                   tuple(1 if s == 0 else 2 for s in range(stages)), projections)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, inner: int, c_out: int, stride: int, projection: bool, bn: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, inner, 3, stride, 1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(inner) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(inner, c_out, 3, 1, 1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(c_out) if bn else nn.Identity()
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, 0, bias=not bn),
                                       nn.BatchNorm2d(c_out) if bn else nn.Identity())
                         if projection else nn.Identity())
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(h + self.shortcut(x))


class ResNetModule(nn.Module):
    """A plan as an ``nn.Module`` (flat images in, logits out); with ``batchnorm`` each convolution
    is followed by a BatchNorm and has no bias, as in training."""

    def __init__(self, plan: ResPlan, batchnorm: bool = False):
        super().__init__()
        convs, blocks = plan.layout()
        geo = plan.geometry()
        self.in_shape = tuple(plan.in_shape)
        stem = convs[0]
        self.stem = nn.Conv2d(plan.in_shape[0], geo[0][0], stem.kernel, stem.stride, stem.padding, bias=not batchnorm)
        self.stem_bn = nn.BatchNorm2d(geo[0][0]) if batchnorm else nn.Identity()
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1) if plan.stem_pool else nn.Identity()
        self.blocks = nn.Sequential(*[
            BasicBlock(geo[i1][1], geo[i1][0], geo[i2][0], convs[i1].stride, ip is not None, batchnorm)
            for i1, i2, ip in blocks])
        self.fc = nn.Linear(geo[-1][1], plan.classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.relu(self.stem_bn(self.stem(x.view(x.shape[0], *self.in_shape)))))
        return self.fc(self.blocks(h).mean((2, 3)))

    def weights(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(conv or linear, its BatchNorm or Identity)`` in the plan's layer order."""
        out = [(self.stem, self.stem_bn)]
        for blk in self.blocks:
            out += [(blk.conv1, blk.bn1), (blk.conv2, blk.bn2)]
            if not isinstance(blk.shortcut, nn.Identity):
                out.append((blk.shortcut[0], blk.shortcut[1]))
        return out + [(self.fc, nn.Identity())]


@torch.no_grad()
def fold(model: ResNetModule) -> Layers:
    """The model's ``(weight, bias)`` pairs in layer order, each BatchNorm folded into its convolution."""
    layers: Layers = []
    for m, bn in model.weights():
        w = m.weight.detach().clone()
        b = m.bias.detach().clone() if m.bias is not None else w.new_zeros(w.shape[0])
        if isinstance(bn, nn.BatchNorm2d):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = w * scale.view(-1, 1, 1, 1)
            b = (b - bn.running_mean) * scale + bn.bias
        layers.append((w.contiguous(), b.contiguous()))
    return layers


@dataclass
class ResNet:
    """A residual network: its plan and its (BatchNorm-folded) weights (implements
    :class:`ecomp.nets.structure.Structure`)."""
    kind: ClassVar[str] = "resnet"
    plan: ResPlan
    l1_reduction: ClassVar[str] = "sum"      # l1_scores as Torch-Pruning's group L1 reduces it
    layers: Layers

    def __post_init__(self) -> None:
        want = [g[:2] for g in self.plan.geometry()]
        got = [tuple(w.shape[:2]) for w, _ in self.layers]
        if got != want:
            raise ValueError(f"weights of shapes {got} do not match the plan's {want}")

    @property
    def units(self) -> tuple[int, ...]:
        return self.plan.widths

    @property
    def classes(self) -> int:
        return self.plan.classes

    @property
    def in_features(self) -> int:
        return self.plan.features

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.plan.in_shape

    @property
    def feature_layers(self) -> int:
        return self.plan.feature_layers

    def layer_groups(self) -> list[tuple[int | None, int | None]]:
        """Per layer: ``(group it writes, group it reads)``."""
        return [(c.writes, c.reads) for c in self.plan.layout()[0]]

    def l1_scores(self) -> list[Tensor]:
        """Per group: each channel's L1 norm of every weight it owns, the rows of every layer that
        writes it and the input channels of every layer that reads it (all that go with it when it
        is removed; Torch-Pruning's group L1 with ``group_reduction="sum"``)."""
        scores = [torch.zeros(u, dtype=self.layers[0][0].dtype, device=self.layers[0][0].device)
                  for u in self.units]
        for (wr, rd), (w, _) in zip(self.layer_groups(), self.layers):
            if wr is not None:
                scores[wr] += w.abs().flatten(1).sum(1)
            if rd is not None:
                scores[rd] += w.abs().transpose(0, 1).flatten(1).sum(1)
        return scores

    def with_layers(self, layers: Layers) -> "ResNet":
        return self.plan.net(layers)

    def input_columns(self, layer: int, kept: Tensor) -> Tensor:
        return kept

    def cut_limits(self, other: "ResNet") -> list[int]:
        """Crossover's cut of each group is at most both parents' widths of it."""
        return [min(a, b) for a, b in zip(self.units, other.units)]

    def crossover_blocks(self, cuts: list[int]) -> list[tuple[int, int]]:
        """Per layer, the ``(rows, input channels)`` block a child takes from the donor: the weights
        joining the donor's channels of the group written to those of the group read (the image's
        channels and the classes belong to both parents)."""
        out = []
        for (wr, rd), (w, _) in zip(self.layer_groups(), self.layers):
            out.append((w.shape[0] if wr is None else cuts[wr], w.shape[1] if rd is None else cuts[rd]))
        return out

    def size(self, kind: str) -> int:
        return plan_size(self.plan, kind)

    def activation_floats(self) -> int:
        return max(o * h * w for o, _, h, w in self.plan.geometry())

    def run(self, x: Tensor, features: str | None = None) -> tuple[Tensor, list[Tensor]]:
        return run(self, x, features)

    def to_module(self, batchnorm: bool = False) -> ResNetModule:
        """A module holding copies of the weights; ``batchnorm=True`` adds an identity BatchNorm
        after each convolution (mean 0, variance ``1 - eps``), for a method that recalibrates it."""
        model = ResNetModule(self.plan, False)
        with torch.no_grad():
            for (m, _), (w, b) in zip(model.weights(), self.layers):
                m.weight.copy_(w)
                m.bias.copy_(b)
        if batchnorm:
            add_identity_batchnorm(model)
        return model.to(self.layers[0][0].device)

    def from_module(self, model: nn.Module) -> "ResNet":
        return self.plan.net(fold(model))

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "plan": self.plan.to_dict()}

    def blueprint(self) -> ResPlan:
        return self.plan

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "widths": list(self.units), "blocks": list(self.plan.blocks),
                "input_dim": self.in_features, "classes": self.classes}

    @staticmethod
    def blueprint_for(image: tuple[int, ...], classes: int, settings: Mapping[str, Any]) -> ResPlan:
        """``parent=resnet``'s plan: He et al.'s CIFAR ResNet of ``depth`` and stage ``widths``."""
        return cifar_resnet(tuple(image), settings.get("classes") or classes, int(settings["depth"]),
                            tuple(settings["widths"]))

    @staticmethod
    def settings_problem(settings: Mapping[str, Any]) -> tuple[str, Any, str] | None:
        depth = settings.get("depth")
        if depth is None or depth < 8 or (depth - 2) % 6:
            return "parent.depth", depth, "6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110)"
        widths = list(settings.get("widths") or [])
        if not widths or any(w < 1 for w in widths):
            return "parent.widths", widths, "a non-empty list of positive stage widths, e.g. [16, 32, 64]"
        return None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], layers: Layers) -> "ResNet":
        plan = ResPlan.from_dict(meta["plan"])
        if plan.problems():
            raise ValueError(f"the plan in its .json cannot run: {plan.problems()}")
        return plan.net(layers)


def add_identity_batchnorm(model: ResNetModule) -> None:
    """Put an identity BatchNorm after every convolution of a folded model (in place)."""
    def bn(conv: nn.Conv2d) -> nn.BatchNorm2d:
        m = nn.BatchNorm2d(conv.out_channels).to(conv.weight.device)
        with torch.no_grad():
            m.running_var.fill_(1.0 - m.eps)
        return m

    model.stem_bn = bn(model.stem)
    for blk in model.blocks:
        blk.bn1, blk.bn2 = bn(blk.conv1), bn(blk.conv2)
        if not isinstance(blk.shortcut, nn.Identity):
            blk.shortcut[1] = bn(blk.shortcut[0])


def features_of(a: Tensor, features: str) -> Tensor:
    return a.flatten(1) if features == "flat" else a.mean((2, 3))


@torch.no_grad()
def run(net: ResNet, x: Tensor, features: str | None = None) -> tuple[Tensor, list[Tensor]]:
    """Logits of flat images ``x`` by a plain pass, and (with ``features``) every block's output."""
    plan, layers = net.plan, net.layers
    convs, blocks = plan.layout()
    h = x.view(x.shape[0], *plan.in_shape)
    s = convs[0]
    h = F.conv2d(h, *layers[0], s.stride, s.padding).relu()
    if plan.stem_pool:
        h = F.max_pool2d(h, 3, 2, 1)
    acts: list[Tensor] = []
    for i1, i2, ip in blocks:
        c1 = convs[i1]
        inner = F.conv2d(h, *layers[i1], c1.stride, 1).relu()
        out = F.conv2d(inner, *layers[i2], 1, 1)
        short = h if ip is None else F.conv2d(h, *layers[ip], c1.stride, 0)
        h = (out + short).relu()
        if features is not None:
            acts.append(features_of(h, features))
    return torch.addmm(layers[-1][1], h.mean((2, 3)), layers[-1][0].T), acts


def macs(plan: ResPlan) -> int:
    """Multiply-accumulates of one image: every convolution and the classifier (the additions, the
    pooling and the average are not multiply-accumulates, as torch's FLOP counter counts)."""
    convs, _ = plan.layout()
    return sum(o * i * (c.kernel * c.kernel * h * w if c.kernel else 1)
               for c, (o, i, h, w) in zip(convs, plan.geometry()))


def params(plan: ResPlan) -> int:
    convs, _ = plan.layout()
    return sum(o * (i * (c.kernel * c.kernel if c.kernel else 1) + 1) for c, (o, i, _, _) in zip(convs, plan.geometry()))


def plan_size(plan: ResPlan, kind: str) -> int:
    if kind == "units":
        return sum(plan.widths)
    if kind == "params":
        return params(plan)
    if kind == "macs":
        return macs(plan)
    raise ValueError(f"size kind {kind!r}: one of {', '.join(SIZES)}")
