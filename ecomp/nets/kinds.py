"""The one place that picks a layer kind: by name, by a saved network's description, by a
population's members.

Every kind is a module that implements :class:`ecomp.nets.structure.Structure` (and its
blueprint); adding one is adding it to :data:`KINDS`, and where its population needs a forward
pass of its own, to :data:`ecomp.kernels.net_forward.FORWARDS`. Everything else asks the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ecomp.nets.convnet import ConvNet
from ecomp.nets.mlp import MLP
from ecomp.nets.net_population import NetPopulation
from ecomp.nets.population import Population
from ecomp.nets.resnet import ResNet
from ecomp.nets.structure import Blueprint, Layers, Structure

KINDS: dict[str, type] = {MLP.kind: MLP, ConvNet.kind: ConvNet, ResNet.kind: ResNet}


def from_meta(meta: dict[str, Any], layers: Layers) -> Structure:
    """The network a saved state dict's ``layers`` and its ``.json`` description hold (a file
    without ``kind`` is an MLP's, as the tool wrote them first); ``ValueError`` if they do not fit."""
    kind = meta.get("kind", MLP.kind)
    if kind not in KINDS:
        raise ValueError(f"unknown network kind {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[kind].from_meta(meta, layers)


def population_of(parent: Structure, members: list[Structure]) -> Population | NetPopulation:
    """The population of ``members`` (networks of ``parent``'s kind): MLPs packed for the
    population-wide products (:class:`Population`), others one network each (:class:`NetPopulation`)."""
    if parent.kind == MLP.kind:
        return Population.from_individuals([m.layers for m in members])
    return NetPopulation(parent.blueprint(), [m.layers for m in members])



def precisions(blueprint: Blueprint) -> tuple[str, ...]:
    """The forward-pass precisions a parent of this blueprint's kind evaluates in (``evolution.precision``):
    an MLP's packed population runs its own float32 kernels; one network per individual runs under
    ``torch.autocast`` as well."""
    return ("float32",) if blueprint.kind == MLP.kind else ("float32", "bfloat16")


def blueprint_for(kind: str, image: tuple[int, ...], classes: int, settings: Mapping[str, Any]) -> Blueprint:
    """The untrained network of kind ``kind`` that ``parent.*`` ``settings`` describe on images of
    shape ``image`` with ``classes`` classes (a parent the tool trains)."""
    return KINDS[kind].blueprint_for(image, classes, settings)


def settings_problem(kind: str, settings: Mapping[str, Any], trained: bool) -> tuple[str, Any, str] | None:
    """An unknown ``parent.kind``, or (for a parent the tool trains) the first of the kind's own
    ``parent.*`` settings out of range, as ``(key, value, allowed)``; None when all is well."""
    if kind not in KINDS:
        return "parent.kind", kind, f"one of {', '.join(KINDS)}"
    return KINDS[kind].settings_problem(settings) if trained else None
