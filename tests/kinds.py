"""The layer kinds the capability tests run over (``tests/test_kinds.py``): a new kind is one more
entry here, a small random parent of that kind and the features of one of its input images."""

from __future__ import annotations

import torch

from ecomp.nets import convnet
from ecomp.nets.mlp import MLP
from ecomp.nets.structure import Structure


def mlp(seed: int = 0) -> Structure:
    g = torch.Generator().manual_seed(seed)
    widths = [36, 12, 10, 5]
    return MLP([(torch.randn(widths[i + 1], widths[i], generator=g) / widths[i] ** 0.5,
                 torch.randn(widths[i + 1], generator=g) * 0.1) for i in range(len(widths) - 1)])


def cnn(seed: int = 0) -> Structure:
    plan = convnet.lenet5((1, 6, 6), 5, channels=(4, 6), kernel=3, padding=(1, 1), pool=1, hidden=(8,))
    torch.manual_seed(seed)
    return convnet.from_module(convnet.build_module(plan), plan)


KINDS = {"mlp": mlp, "cnn": cnn}      # each parent reads 36 features (6 x 6 grey images) into 5 classes
FEATURES = 36
