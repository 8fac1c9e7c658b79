"""The forward pass of a population kept one network per individual
(:class:`ecomp.nets.net_population.NetPopulation`), by its layer kind."""

from __future__ import annotations

from torch import Tensor

from ecomp.kernels import conv_forward, res_forward
from ecomp.kernels.backend import Backend
from ecomp.nets.net_population import NetPopulation

FORWARDS = {"cnn": conv_forward.forward, "resnet": res_forward.forward}


def forward(pop: NetPopulation, x: Tensor, features: str = "flat", backend: Backend | None = None
            ) -> tuple[Tensor, list[list[Tensor]], None]:
    """Logits ``(pop, batch, classes)`` and ``hidden[l][i]`` (individual ``i``'s representation
    ``l`` as ``(batch, features)``), as the kind's grouped pass computes them, on the paths the
    run's ``backend`` chooses (None: PyTorch's alone)."""
    return FORWARDS[pop.plan.kind](pop, x, features, backend=backend)
