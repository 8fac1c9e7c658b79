"""The forward pass of a convolutional population on one input batch.

Two ways, with the same results up to float rounding (the tests hold them together):

* :func:`forward_loop`: one network at a time, stage by stage (:func:`ecomp.nets.convnet.run`);
  the straightforward oracle.
* :func:`forward_grouped`: one batch per architecture. The individuals of one architecture
  (evolution makes most of them alike within a few dozen generations) run as one network: their
  first convolutions' filters concatenated into one convolution on the shared images, every
  later convolution as a grouped convolution (``groups`` = individuals), every linear stage as
  one batched product. ``benchmarks/bench_conv.py`` measures both; the grouped pass is the default.

The individuals of a group are split into chunks so that no activation tensor holds more than
``MAX_ELEMENTS`` floats (a 1,000-image pass of a whole population would otherwise need GBs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ecomp.nets import convnet
from ecomp.nets.conv_population import ConvPopulation
from ecomp.nets.convnet import ConvPlan, features_of

MAX_ELEMENTS = 1 << 25          # floats per activation tensor of a chunk (128 MB)


@torch.no_grad()
def forward_loop(pop: ConvPopulation, x: Tensor, features: str = "flat") -> tuple[Tensor, list[list[Tensor]]]:
    """Logits ``(pop, batch, classes)`` and ``hidden[l][i]``, individual ``i``'s stage-``l``
    post-ReLU activations as ``(batch, features)``, one network at a time."""
    logits = x.new_empty(pop.size, x.shape[0], pop.classes)
    hidden: list[list[Tensor]] = [[] for _ in range(len(pop.plan.stages) - 1)]
    for i in range(pop.size):
        out, acts = convnet.run(pop.network(i), x, features)
        logits[i] = out
        for l, a in enumerate(acts):
            hidden[l].append(a)
    return logits, hidden


def _chunk(plan: ConvPlan, units: tuple[int, ...], n_images: int, size: int) -> int:
    widest = max(u * h * w for (u, h, w) in plan.with_units(units).maps()[:-1])
    return max(1, min(size, MAX_ELEMENTS // max(1, widest * n_images)))


@torch.no_grad()
def _group(pop: ConvPopulation, members: list[int], x4: Tensor, features: str) -> tuple[Tensor, list[list[Tensor]]]:
    """Logits ``(g, batch, classes)`` and per-stage activations of individuals ``members`` (one architecture)."""
    plan, g, n = pop.plan, len(members), x4.shape[0]
    h = x4
    acts: list[list[Tensor]] = []
    last = len(plan.stages) - 1
    for l, s in enumerate(plan.stages):
        ws = [pop.members[i][l][0] for i in members]
        b = torch.cat([pop.members[i][l][1] for i in members])
        if s.kind == "conv":
            h = F.conv2d(h, torch.cat(ws), b, s.stride, s.padding, 1, 1 if l == 0 else g)   # (n, g*u, H, W)
            h = h.relu_()
            c = ws[0].shape[0]
            view = h.view(n, g, c, h.shape[2], h.shape[3])
            acts.append([features_of(view[:, j], features) for j in range(g)])
            h = convnet._after(plan, l, h)
            continue
        if h.dim() == 4:                                               # the Flatten: (g, n, u*h*w)
            h = h.reshape(n, g, -1).transpose(0, 1)
        w = torch.stack(ws)                                            # (g, out, in)
        h = torch.baddbmm(b.view(g, 1, -1), h, w.transpose(1, 2))      # (g, n, out)
        if l < last:
            h = h.relu_()
            acts.append([h[j] for j in range(g)])
    return h, acts


@torch.no_grad()
def forward_grouped(pop: ConvPopulation, x: Tensor, features: str = "flat") -> tuple[Tensor, list[list[Tensor]]]:
    """:func:`forward_loop`'s results, one batch per architecture (in chunks)."""
    x4 = x.view(x.shape[0], *pop.plan.in_shape)
    logits = x.new_empty(pop.size, x.shape[0], pop.classes)
    n_stages = len(pop.plan.stages) - 1
    hidden: list[list[Tensor | None]] = [[None] * pop.size for _ in range(n_stages)]
    for units, members in pop.groups().items():
        step = _chunk(pop.plan, units, x.shape[0], len(members))
        for s in range(0, len(members), step):
            part = members[s:s + step]
            out, acts = _group(pop, part, x4, features)
            logits[part] = out
            for l in range(n_stages):
                for j, i in enumerate(part):
                    hidden[l][i] = acts[l][j]
    return logits, hidden


def forward(pop: ConvPopulation, x: Tensor, features: str = "flat", grouped: bool = True
            ) -> tuple[Tensor, list[list[Tensor]], None]:
    """The population's forward pass as :func:`ecomp.kernels.forward.forward` returns it (no stacks)."""
    logits, hidden = (forward_grouped if grouped else forward_loop)(pop, x, features)
    return logits, hidden, None
