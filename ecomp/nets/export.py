"""The network of a ``torch.export`` program, read from its graph: a residual one
(:mod:`ecomp.nets.export_resnet`) when the graph adds activations, else a chain
(:mod:`ecomp.nets.export_graph`). Neither runs or unpickles anything of the program."""

from __future__ import annotations

from ecomp.nets.export_graph import export_chain
from ecomp.nets.export_resnet import export_resnet, has_residual_adds
from ecomp.nets.pt2 import Archive
from ecomp.nets.structure import Structure


def export_net(archive: Archive, where: str) -> Structure:
    """The network ``archive`` holds; :class:`ecomp.errors.CheckpointError` (one line) if it cannot be read."""
    if has_residual_adds(archive):
        return export_resnet(archive, where)
    return export_chain(archive, where)
