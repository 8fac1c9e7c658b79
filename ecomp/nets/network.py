"""The networks EComp compresses, and how they are stored.

Two layer kinds: a fully connected network (an MLP) is described by an :class:`Architecture`
(input size, hidden widths, classes) and a list of ``(weight, bias)`` pairs, one per linear
layer, with weights laid out ``(out, in)`` as in ``torch.nn.Linear``; a convolutional one is a
:class:`ecomp.nets.convnet.ConvNet` (its plan and its pairs). The functions here take either
(``Net``). Networks are saved as a state dict plus a JSON architecture and loaded with
``weights_only=True``: nothing pickled is ever executed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ecomp.nets import convnet
from ecomp.nets.convnet import ConvNet, ConvPlan

Layers = list[tuple[Tensor, Tensor]]
Net = Layers | ConvNet            # an MLP's pairs, or a convolutional network


@dataclass(frozen=True)
class Architecture:
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


def build_mlp(arch: Architecture) -> nn.Sequential:
    """``Flatten -> (Linear -> ReLU) * len(hidden) -> Linear``."""
    mods: list[nn.Module] = [nn.Flatten()]
    widths = arch.widths
    for i in range(len(widths) - 1):
        mods.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def layers_of(model: nn.Module) -> Layers:
    """The ``(weight, bias)`` pairs of a model's linear layers (detached)."""
    return [(m.weight.detach(), m.bias.detach()) for m in linear_layers(model)]


def architecture_of(layers: Layers) -> Architecture:
    ws = [w for w, _ in layers]
    return Architecture(ws[0].shape[1], tuple(w.shape[0] for w in ws[:-1]), ws[-1].shape[0])


def model_from_layers(layers: Net) -> nn.Sequential:
    """A fresh ``nn.Sequential`` holding copies of the given weights (flat images in, logits out)."""
    if isinstance(layers, ConvNet):
        return convnet.to_module(layers)
    model = build_mlp(architecture_of(layers))
    with torch.no_grad():
        for lin, (w, b) in zip(linear_layers(model), layers):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    return model.to(layers[0][0].device)


def pairs_of(net: Net) -> Layers:
    """The ``(weight, bias)`` pairs of either kind of network."""
    return net.layers if isinstance(net, ConvNet) else net


def to_device(net: Net, device) -> Net:
    """``net`` with its weights on ``device`` (the same tensors when already there)."""
    if isinstance(net, ConvNet):
        return net.to(device)
    return [(w.to(device), b.to(device)) for w, b in net]


def detached(net: Net) -> Net:
    """A copy on the CPU, detached from any graph."""
    if isinstance(net, ConvNet):
        return net.detached()
    return [(w.detach().cpu().clone(), b.detach().cpu().clone()) for w, b in net]


def save_network(layers: Net, path: Path, extra: dict | None = None) -> None:
    """Write ``<path>`` (state dict) and ``<path>.json`` (architecture + extra)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"{i}.{k}": t.detach().cpu().contiguous()
             for i, (w, b) in enumerate(pairs_of(layers)) for k, t in (("weight", w), ("bias", b))}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    meta = json.loads(layers.to_json() if isinstance(layers, ConvNet) else architecture_of(layers).to_json())
    meta.update(extra or {})
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path)  # atomic: a reader never sees half a checkpoint


def load_network(path: Path, expected: Architecture | ConvPlan | None = None) -> Net:
    """Load a network saved by :func:`save_network` (a convolutional one by its ``.json``'s plan).

    Raises ``ValueError`` naming the file when it is unreadable or does not
    match ``expected``.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        n = len(state) // 2
        layers = [(state[f"{i}.weight"], state[f"{i}.bias"]) for i in range(n)]
        if any(w.dim() != 2 for w, _ in layers):
            meta = json.loads(path.with_suffix(path.suffix + ".json").read_text())
            net = ConvNet(ConvPlan.from_dict(meta["plan"]), layers)
            if net.plan.problems() or convnet.params(net.plan) != sum(w.numel() + b.numel() for w, b in layers):
                raise ValueError("the weights do not fit the plan in its .json")
            if expected is not None and net.plan != expected:
                raise ValueError(f"holds plan {net.plan}, expected {expected}")
            return net
        arch = architecture_of(layers)
        for i, (w, b) in enumerate(layers):
            if b.shape != (w.shape[0],) or (i and w.shape[1] != layers[i - 1][0].shape[0]):
                raise ValueError("layer shapes do not chain")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"network file {path} is unreadable or corrupt ({exc})") from exc
    if expected is not None and arch != expected:
        raise ValueError(f"network file {path} holds architecture {arch}, expected {expected}")
    return layers


@torch.no_grad()
def logits(layers: Net, x: Tensor) -> Tensor:
    """Class scores ``(n, classes)`` of flat inputs ``x`` by a plain per-layer forward pass."""
    if isinstance(layers, ConvNet):
        return convnet.run(layers, x)[0]
    h = x
    for i, (w, b) in enumerate(layers):
        h = torch.addmm(b, h, w.T)
        if i < len(layers) - 1:
            h = h.relu()
    return h


@torch.no_grad()
def accuracy(layers: Net, x: Tensor, y: Tensor, chunk: int = 10_000) -> float:
    """Fraction of ``x`` classified as ``y`` by :func:`logits`, ``chunk`` images at a time."""
    correct = 0
    for s in range(0, x.shape[0], chunk):
        correct += int((logits(layers, x[s:s + chunk]).argmax(1) == y[s:s + chunk]).sum())
    return correct / x.shape[0]
