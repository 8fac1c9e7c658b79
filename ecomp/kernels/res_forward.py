"""The forward pass of a population of residual networks on one input batch.

Three PyTorch ways, with the same results up to float rounding (the tests hold them together);
on the CPU a run takes the C pass (:mod:`ecomp.kernels.res_native`) before any of them:

* :func:`forward_loop`: one network at a time (:func:`ecomp.nets.resnet.run`); the oracle.
* :func:`forward_each`: one network at a time, the stem and the projections as products; the
  CPU's PyTorch pass, where the C pass cannot run.
* :func:`forward_grouped`: the individuals of one architecture run as one network: the stem's
  filters concatenated into one convolution of the shared images, every later convolution a
  grouped convolution (``groups`` = individuals), the classifier one batched product, on
  channels-last maps. The default on a GPU; on the CPU one network at a time is faster
  (:func:`forward`).
  Individuals are taken ``chunk`` at a time so that no tensor holds more than
  ``MAX_ELEMENTS`` floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ecomp.kernels import res_native
from ecomp.kernels.backend import Backend
from ecomp.nets import resnet
from ecomp.nets.net_population import NetPopulation
from ecomp.nets.resnet import ResPlan

MAX_ELEMENTS = 1 << 24          # floats per activation tensor of the grouped pass (64 MB)


def forward_loop(pop: NetPopulation, x: Tensor, features: str = "flat") -> tuple[Tensor, list[list[Tensor]]]:
    """The oracle: one network at a time (:meth:`NetPopulation.run_each`)."""
    return pop.run_each(x, features)


def _stem(x4: Tensor, plan: ResPlan) -> tuple[Tensor, tuple[int, int]]:
    """The images' stem patches ``(n, C*k*k, H'*W')``, shared by every network, and ``(H', W')``."""
    s = plan.layout()[0][0]
    _, h, w = plan.in_shape
    size = ((h + 2 * s.padding - s.kernel) // s.stride + 1, (w + 2 * s.padding - s.kernel) // s.stride + 1)
    return F.unfold(x4, s.kernel, padding=s.padding, stride=s.stride), size


def _project(h: Tensor, w: Tensor, b: Tensor, stride: int) -> Tensor:
    """A 1x1 convolution with ``stride`` and no padding as a product on the strided pixels; on
    channels-last maps one product of all pixels' channels, the output channels-last too."""
    if h.shape[1] > 1 and h.is_contiguous(memory_format=torch.channels_last):
        s = h.permute(0, 2, 3, 1)[:, ::stride, ::stride]                    # (n, H', W', c), a view
        n, ho, wo, c = s.shape
        return torch.addmm(b, s.reshape(-1, c), w.view(w.shape[0], c).T).view(n, ho, wo, -1).permute(0, 3, 1, 2)
    s = h[:, :, ::stride, ::stride]
    n, c, ho, wo = s.shape
    return torch.matmul(w.view(w.shape[0], c), s.reshape(n, c, ho * wo)).view(n, -1, ho, wo).add_(b.view(1, -1, 1, 1))


def _run_one(net, x4: Tensor, stem: tuple[Tensor, tuple[int, int]], features: str) -> tuple[Tensor, list[Tensor]]:
    """:func:`ecomp.nets.resnet.run` of one network, with two of its convolutions as products:
    the stem (one input channel or three, where oneDNN runs far below its rate) on the shared
    patches ``stem``, and the 1x1 projections on the strided pixels; 2.1x and 2.4x faster on
    ResNet-8's shapes (``benchmarks/README.md``). The ReLUs write in place. The maps go
    channels-last at the first strided block: on ResNet-8's 14x14 and 7x7 stages oneDNN's NCHW
    convolutions take 1.3-1.8x the channels-last ones' time per call, while on the first stage's
    28x28 maps of 4-16 channels NCHW is the faster (profiled, ``benchmarks/README.md``).
    Channels-last maps give their flat features in ``(H, W, C)`` order, as the CNN's fast pass
    does: the distances between images, all the similarity reads, do not depend on the order."""
    plan, layers = net.plan, net.layers
    convs, blocks = plan.layout()
    n = x4.shape[0]
    cols, (ho, wo) = stem
    w, b = layers[0]
    h = torch.matmul(w.view(w.shape[0], -1), cols).view(n, -1, ho, wo).add_(b.view(1, -1, 1, 1)).relu_()
    if plan.stem_pool:
        h = F.max_pool2d(h, 3, 2, 1)
    acts: list[Tensor] = []
    for i1, i2, ip in blocks:
        c1 = convs[i1]
        if c1.stride > 1 and not h.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        inner = F.conv2d(h, *layers[i1], c1.stride, 1).relu_()
        out = F.conv2d(inner, *layers[i2], 1, 1)
        if ip is None:
            short = h
        elif convs[ip].kernel == 1 and convs[ip].padding == 0:
            short = _project(h, *layers[ip], c1.stride)
        else:
            short = F.conv2d(h, *layers[ip], c1.stride, convs[ip].padding)
        h = out.add_(short).relu_()
        if features == "flat" and h.is_contiguous(memory_format=torch.channels_last):
            acts.append(h.permute(0, 2, 3, 1).reshape(n, -1))       # (H, W, C) order: a view, no copy
        else:
            acts.append(resnet.features_of(h, features))
    return torch.addmm(layers[-1][1], h.mean((2, 3)), layers[-1][0].T), acts


@torch.no_grad()
def forward_each(pop: NetPopulation, x: Tensor, features: str = "flat") -> tuple[Tensor, list[list[Tensor]]]:
    """:func:`forward_loop`'s results (up to float rounding), one network at a time by
    :func:`_run_one`: the CPU's PyTorch pass, where the C pass cannot run."""
    n = x.shape[0]
    x4 = x.view(n, *pop.plan.in_shape)
    stem = _stem(x4, pop.plan)
    logits = x.new_empty(pop.size, n, pop.classes)
    hidden: list[list[Tensor]] = [[] for _ in range(pop.plan.feature_layers)]
    for i in range(pop.size):
        out, acts = _run_one(pop.network(i), x4, stem, features)
        logits[i] = out
        for l, a in enumerate(acts):
            hidden[l].append(a)
    return logits, hidden


def _cat(members: list, l: int) -> tuple[Tensor, Tensor]:
    return torch.cat([m[l][0] for m in members]), torch.cat([m[l][1] for m in members])


def _run_group(plan: ResPlan, members: list, x4: Tensor, features: str) -> tuple[Tensor, list[list[Tensor]]]:
    """``members`` (same architecture ``plan``) on images ``x4``: logits ``(k, n, classes)`` and
    per block each member's output rows."""
    convs, blocks = plan.layout()
    k, n = len(members), x4.shape[0]
    s = convs[0]
    h = F.conv2d(x4, *_cat(members, 0), s.stride, s.padding).relu_()
    if plan.stem_pool:
        h = F.max_pool2d(h, 3, 2, 1)
    hidden: list[list[Tensor]] = []
    for i1, i2, ip in blocks:
        c1 = convs[i1]
        inner = F.conv2d(h, *_cat(members, i1), c1.stride, 1, 1, k).relu_()
        out = F.conv2d(inner, *_cat(members, i2), 1, 1, 1, k)
        out += h if ip is None else F.conv2d(h, *_cat(members, ip), c1.stride, 0, 1, k)
        h = out.relu_()
        c = h.shape[1] // k
        per = h.view(n, k, c, *h.shape[2:])
        hidden.append([resnet.features_of(per[:, j], features) for j in range(k)])
    pooled = h.mean((2, 3)).view(n, k, -1).transpose(0, 1)                      # (k, n, c)
    w = torch.stack([m[-1][0] for m in members])                               # (k, classes, c)
    b = torch.stack([m[-1][1] for m in members])
    return torch.baddbmm(b.unsqueeze(1), pooled, w.transpose(1, 2)), hidden


@torch.no_grad()
def forward_grouped(pop: NetPopulation, x: Tensor, features: str = "flat", channels_last: bool = True
                    ) -> tuple[Tensor, list[list[Tensor]]]:
    """As :func:`forward_loop`, the individuals of each architecture run together (on channels-last
    maps unless ``channels_last`` is False)."""
    n = x.shape[0]
    x4 = x.view(n, *pop.plan.in_shape)
    if channels_last:
        x4 = x4.contiguous(memory_format=torch.channels_last)
    logits = x.new_empty(pop.size, n, pop.classes)
    hidden: list[list[Tensor | None]] = [[None] * pop.size for _ in range(pop.plan.feature_layers)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, w in enumerate(pop.widths):
        groups.setdefault(w, []).append(i)
    for widths, idx in groups.items():
        plan = pop.plan.with_units(widths)
        widest = max(o * h * w for o, _, h, w in plan.geometry())
        chunk = max(1, MAX_ELEMENTS // max(1, widest * n))
        for s in range(0, len(idx), chunk):
            sub = idx[s:s + chunk]
            out, acts = _run_group(plan, [pop.members[i] for i in sub], x4, features)
            logits[sub] = out.to(logits.dtype)     # bfloat16 under evolution.precision=bfloat16
            for l, a in enumerate(acts):
                for j, i in enumerate(sub):
                    hidden[l][i] = a[j]
    return logits, hidden


def forward(pop: NetPopulation, x: Tensor, features: str = "flat", grouped: bool | None = None,
            backend: Backend | None = None) -> tuple[Tensor, list[list[Tensor]], None]:
    """The population's forward pass as :func:`ecomp.kernels.forward.forward` returns it (no
    stacks). On the CPU, where the run's ``backend`` has the C library (``native_copies``), the
    C pass (:mod:`ecomp.kernels.res_native`: every network whole on a vector of images at a
    time, at 0.63-0.77 of the FMA ceiling where oneDNN's convolutions of an individual's few
    channels run at 0.27-0.45 of it); where it cannot run, or with no backend, PyTorch's.
    ``grouped``: None = on a GPU only. On the CPU oneDNN runs a network's convolutions of 4 to
    64 channels 1.7-2.5x faster one network at a time than as grouped convolutions, on the
    initial population and on converged ones alike (``benchmarks/bench_resnet.py``), so its
    PyTorch pass is :func:`forward_each`."""
    if grouped is None:
        grouped = x.device.type != "cpu"
    if not grouped and backend is not None and backend.native_copies:
        done = res_native.forward(pop, x, features)
        if done is not None:
            return (*done, None)
    logits, hidden = (forward_grouped if grouped else forward_each)(pop, x, features)
    return logits, hidden, None
