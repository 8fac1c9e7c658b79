"""The interface every layer kind implements, and what is written once on top of it.

A *structure* is a trained network of one layer kind: its ``(weight, bias)`` pairs, one per
weight layer (``layers``), and what the kind needs to read them. Its prunable *units* come in
*groups* (``units[g]`` is group ``g``'s width): every layer writes one group (its rows) and
reads one (its inputs), as :meth:`Structure.layer_groups` says. On a chain (MLP, LeNet-5) group
``l`` is layer ``l``'s output units, read by layer ``l + 1``; on a residual network a group is a
set of channels tied by the additions, written and read by several layers
(:mod:`ecomp.nets.resnet`). Removing unit ``u`` of a group removes row ``u`` of every layer that
writes it and the input columns of every layer that reads it (``input_columns``: a neuron's
column, a channel of the next convolution, a channel's block of columns after a Flatten). The operators (L1 pruning,
crossover, mutation), the fitness, the methods and the tracking see a network only through this
interface; each kind implements it in its own module (:mod:`ecomp.nets.mlp`,
:mod:`ecomp.nets.convnet`) and :mod:`ecomp.nets.kinds` is the one place that picks a kind.

A *blueprint* is a kind's untrained description (an MLP's widths, a CNN's plan): what the tool
trains a parent from, and what a checkpoint's weights are checked against.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

Layers = list[tuple[Tensor, Tensor]]      # (weight, bias) per weight layer, weights (out, in, ...)


class Structure(Protocol):
    kind: ClassVar[str]                    # the kind's name: mlp | cnn | resnet (a network file's "kind")
    l1_reduction: ClassVar[str]            # l1_scores is Torch-Pruning's group L1 with this group_reduction
    layers: Layers

    @property
    def units(self) -> tuple[int, ...]:
        """Units of every prunable group (on a chain: every layer but the classifier)."""

    @property
    def classes(self) -> int: ...

    @property
    def feature_layers(self) -> int:
        """How many hidden representations :meth:`run` returns (what ``similarity.layers`` indexes)."""

    def layer_groups(self) -> list[tuple[int | None, int | None]]:
        """Per layer: ``(group it writes, group it reads)``; None for the classes and the image."""

    def l1_scores(self) -> list[Tensor]:
        """Per group: each unit's L1 score, the initial population's and ``l1_prune``'s ranking."""

    def cut_limits(self, other: "Structure") -> list[int]:
        """Crossover with ``other``: the largest cut of each cut point (a layer on a chain, a group
        on a residual network)."""

    def crossover_blocks(self, cuts: list[int]) -> list[tuple[int, int]]:
        """Per layer, the ``(rows, input columns)`` block a child takes from the donor for ``cuts``."""

    @property
    def in_features(self) -> int:
        """Features of one flat input image (``C x H x W``)."""

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one input image the network reads (``(features,)`` for a flat one)."""

    def with_layers(self, layers: Layers) -> "Structure":
        """A network of this kind and shape but ``layers``' units (read from their rows)."""

    def input_columns(self, layer: int, kept: Tensor) -> Tensor:
        """The indices along ``layer``'s second weight dimension (its inputs) that the kept units
        ``kept`` of the layer before feed."""

    def size(self, kind: str) -> int:
        """``units``, ``params`` or ``macs`` (one image's multiply-accumulates)."""

    def activation_floats(self) -> int:
        """Floats per image of the largest tensor :meth:`run` makes (a convolution's maps before
        their pooling): how many images :func:`accuracy` runs at once."""

    def run(self, x: Tensor, features: str | None = None) -> tuple[Tensor, list[Tensor]]:
        """Logits of flat images ``x`` by a plain layer-by-layer pass, and (with ``features``) every
        prunable layer's output after its ReLU (and pooling), one row per image."""

    def to_module(self, batchnorm: bool = False) -> nn.Module:
        """A fresh ``nn.Module`` (flat images in, logits out) holding copies of the weights."""

    def from_module(self, model: nn.Module) -> "Structure":
        """The network ``model`` (one :meth:`to_module` built, since trained) holds now."""

    def meta(self) -> dict[str, Any]:
        """The JSON description beside a saved state dict (``kind`` and the shape)."""

    def blueprint(self) -> "Blueprint":
        """This network's shape, untrained (what ``method=scratch`` retrains)."""

    def settings(self) -> dict[str, Any]:
        """The ``parent.*`` settings that describe this network (a checkpoint's, for the record)."""


class Individuals(Protocol):
    """A population as the loop, the operators and the fitness see it. Two storages implement it:
    :class:`ecomp.nets.population.Population` packs every layer across individuals (an MLP's;
    the population-wide products and crossover's fast paths need it), and
    :class:`ecomp.nets.net_population.NetPopulation` keeps one network per individual."""
    packed: ClassVar[bool]                 # layers packed across individuals (the fast paths apply)
    widths: list[tuple[int, ...]]          # units of each individual's prunable layers

    @property
    def size(self) -> int: ...

    @property
    def classes(self) -> int: ...

    @property
    def in_features(self) -> int: ...

    @property
    def uniform(self) -> bool:
        """Every individual has the same units (one architecture)."""

    def individual(self, i: int) -> Layers:
        """Individual ``i``'s ``(weight, bias)`` pairs (its storage, not copies)."""

    def network(self, i: int) -> Structure:
        """Individual ``i`` as a network of its kind."""

    def sizes(self, kind: str) -> Tensor:
        """``(pop,)`` float64 size of each individual."""

    def take(self, indices: list[int]) -> "Individuals":
        """Copies of individuals ``indices``, in that order."""


class Blueprint(Protocol):
    """An untrained description of a network of one kind."""

    kind: ClassVar[str]                    # its networks' kind (Structure.kind)

    @property
    def units(self) -> tuple[int, ...]:
        """Units of every prunable group."""

    @property
    def feature_layers(self) -> int:
        """How many hidden representations its networks' ``run`` returns."""

    def with_units(self, units: tuple[int, ...]) -> "Blueprint":
        """The same shape with ``units[g]`` units in prunable group ``g``."""

    def problems(self) -> str | None:
        """Why a network of this shape cannot run (one phrase, naming the settings to change), or None."""

    def build(self, batchnorm: bool = False) -> nn.Module:
        """A freshly initialised module of this shape (flat images in, logits out)."""

    def net(self, layers: Layers) -> Structure:
        """The network of this structure holding ``layers`` (its units read from their rows)."""

    def size(self, kind: str) -> int:
        """``units``, ``params`` or ``macs`` of a network of this shape."""

    def network(self, model: nn.Module) -> Structure:
        """The structure a module built by :meth:`build` holds (BatchNorm folded where there is one)."""

    def matches(self, net: Structure) -> bool:
        """``net`` has this shape."""

    def cache_key(self, recipe: dict[str, Any]) -> dict[str, Any]:
        """What a parent trained by ``recipe`` (a :class:`ecomp.nets.parent.TrainSpec` as a dict)
        from this blueprint is cached under: the kind decides what of the recipe it depends on."""


class Chain:
    """What every chain kind (MLP, LeNet-5) shares: layer ``l`` writes group ``l`` (the classifier
    none) and reads group ``l - 1``; a unit's L1 score is its own row's (Li et al.); crossover cuts
    each layer at most at both parents' input and output units there, the first layer's input
    counted in image features. A kind adds ``crossover_blocks``: which inputs a cut's rows span."""
    l1_reduction: ClassVar[str] = "first"    # Torch-Pruning's group L1 of a unit's own row

    @property
    def feature_layers(self) -> int:
        return len(self.units)

    def layer_groups(self) -> list[tuple[int | None, int | None]]:
        n = len(self.layers)
        return [(l if l < n - 1 else None, l - 1 if l > 0 else None) for l in range(n)]

    def l1_scores(self) -> list[Tensor]:
        return [w.abs().flatten(1).sum(1) for w, _ in self.layers[:-1]]

    def cut_limits(self, other: Structure) -> list[int]:
        dims_a = (self.in_features, *self.units, self.classes)
        dims_b = (other.in_features, *other.units, other.classes)
        return [min(dims_a[l], dims_a[l + 1], dims_b[l], dims_b[l + 1]) for l in range(len(dims_a) - 1)]


def l1_ranking(net: Structure) -> list[Tensor]:
    """Per group: unit indices by decreasing L1 score (:meth:`Structure.l1_scores`)."""
    return [torch.argsort(s, descending=True, stable=True) for s in net.l1_scores()]


def prune(net: Structure, keep: list[Tensor]) -> Structure:
    """The sub-network keeping units ``keep[g]`` (sorted indices) of each group."""
    out: Layers = []
    for l, ((w, b), (writes, reads)) in enumerate(zip(net.layers, net.layer_groups())):
        if writes is not None:
            w, b = w[keep[writes]], b[keep[writes]]
        if reads is not None:
            w = w[:, net.input_columns(l, keep[reads])]
        out.append((w.contiguous(), b.contiguous()))
    return net.with_layers(out)


def to_device(net: Structure, device) -> Structure:
    """``net`` with its weights on ``device`` (the same tensors when already there)."""
    return net.with_layers([(w.to(device), b.to(device)) for w, b in net.layers])


def detached(net: Structure) -> Structure:
    """A copy on the CPU, detached from any graph."""
    return net.with_layers([(w.detach().cpu().clone(), b.detach().cpu().clone()) for w, b in net.layers])


@torch.no_grad()
def logits(net: Structure, x: Tensor) -> Tensor:
    """Class scores ``(n, classes)`` of flat inputs ``x``."""
    return net.run(x)[0]


CHUNK_MACS = 10 ** 10         # multiply-accumulates per chunk of images :func:`accuracy` runs at once
CHUNK_FLOATS = 1 << 21        # floats of a chunk's largest tensor (8 MB)


@torch.no_grad()
def accuracy(net: Structure, x: Tensor, y: Tensor, chunk: int | None = None) -> float:
    """Fraction of ``x`` classified as ``y`` by :func:`logits`, ``chunk`` images at a time: by
    default up to 10,000 (an MLP's whole test split), fewer where they would cost more than
    ``CHUNK_MACS`` together or a tensor of theirs would hold more than ``CHUNK_FLOATS``
    (:meth:`Structure.activation_floats`). A convolution's maps of 10,000 images are hundreds of
    MB, written to memory the allocator hands back to the kernel and faults in anew at every
    call; LeNet-5's maps of 445 images stay in cache, 2.7x faster (``benchmarks/README.md``). A
    chunk's logits are the same bits as the whole batch's on the machines measured."""
    if chunk is None:
        chunk = max(1, min(10_000, CHUNK_MACS // max(1, net.size("macs")),
                           CHUNK_FLOATS // max(1, net.activation_floats())))
    correct = 0
    for s in range(0, x.shape[0], chunk):
        correct += int((logits(net, x[s:s + chunk]).argmax(1) == y[s:s + chunk]).sum())
    return correct / x.shape[0]
