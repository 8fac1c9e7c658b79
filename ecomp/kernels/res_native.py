"""A residual population's forward pass in C (``csrc/resnet.c``): every network on a vector's
worth of images at a time, the images in the vectors' lanes, the maps kept in each thread's
buffers from the stem to the classifier.

:func:`ecomp.kernels.res_forward.forward` takes it on the CPU where the run's backend has the C
library (``Backend.native_copies``), and the PyTorch pass wherever :func:`forward` returns None:
no vector copy here, a library without OpenMP, tensors other than float32 on the CPU,
``torch.autocast`` on (``evolution.precision=bfloat16``), or maps so large that a thread's six
of them for 16 images exceed ``MAX_THREAD_BYTES``. Its results agree with the loop's
(:func:`res_forward.forward_loop`) within float rounding; flat features come in ``(H, W, C)``
order, as the PyTorch pass's channels-last blocks give them (the distances between images, all
the similarity reads, do not depend on it).
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from ecomp.kernels.c_library import load
from ecomp.nets.net_population import NetPopulation
from ecomp.nets.resnet import ResPlan

_i64 = ctypes.POINTER(ctypes.c_int64)
MAX_THREAD_BYTES = 256 << 20    # a thread's six maps at most (ResNet-8, 28x28: 5.5 MB; ResNet-18, 224x224: 0.32 GB)
PACK_TAILS = True               # the last few images of several networks in one vector (_tasks); the tests turn it off


def _ints(values: list[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _arg(t: Tensor):
    return ctypes.cast(t.data_ptr(), _i64)


def runs_here(plan: ResPlan, x: Tensor) -> bool:
    """Whether :func:`forward` can take this population's plan and images here."""
    lib = load()
    return (lib.ecomp_conv_block() > 0 and bool(lib.ecomp_openmp()) and plan.stem_pool in (0, 3)
            and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2
            and not torch.is_autocast_enabled("cpu"))     # evolution.precision=bfloat16: oneDNN's bfloat16


def _tasks(pop: NetPopulation, n: int, vw: int) -> tuple[Tensor, int]:
    """The C pass's tasks (rows of four networks, first image, images, networks per vector: its
    ``ResTask``) and the most networks a task interleaves. Each network's images go ``vw`` at a
    time; the last few (``n % vw``, four of 100 in vectors of 16), where they would fill a quarter
    of a vector or half of one, share it with the same few of three or one other network of the
    same architecture (``PACK_TAILS``), each lane computing what it would alone."""
    tail = n % vw
    per = (4 if tail <= vw // 4 else 2 if tail <= vw // 2 else 1) if tail and PACK_TAILS else 1
    rows = [(j, -1, -1, -1, i0, vw, 1) for j in range(pop.size) for i0 in range(0, n - tail, vw)]
    if tail:
        for members in pop.groups().values():
            whole = len(members) - len(members) % per
            rows += [(*members[k:k + per], *[-1] * (4 - per), n - tail, tail, per) for k in range(0, whole, per)]
            rows += [(j, -1, -1, -1, n - tail, tail, 1) for j in members[whole:]]
    return _ints([v for r in rows for v in r]).view(-1, 7), per


@torch.no_grad()
def forward(pop: NetPopulation, x: Tensor, features: str = "flat") -> tuple[Tensor, list[list[Tensor]]] | None:
    """Logits ``(pop, n, classes)`` and ``hidden[l][i]`` (block ``l``'s output of individual ``i`` as
    ``(n, features)``: flat in ``(H, W, C)`` order, or with any other ``features`` the channels'
    means, as :func:`ecomp.nets.resnet.features_of`); None where the C pass cannot run here."""
    plan = pop.plan
    if x.dim() != 2 or x.shape[1] != plan.features:
        raise ValueError(f"res_native.forward: expected images (n, {plan.features}), got {tuple(x.shape)}")
    if not runs_here(plan, x):
        return None
    layers = [layer for member in pop.members for layer in member]
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for layer in layers for t in layer):
        return None
    convs, blocks = plan.layout()
    n, nets, nl, mean = x.shape[0], pop.size, len(convs), features != "flat"
    x = x.contiguous()
    geometry: dict[tuple[int, ...], list[tuple[int, int, int, int]]] = {}
    width, feat_sizes = [], []
    for units, member in zip(pop.widths, pop.members):
        geo = geometry.get(units) or geometry.setdefault(units, plan.with_units(units).geometry())
        if any(tuple(wt.shape[:2]) != (o, i) for (wt, _), (o, i, _, _) in zip(member, geo, strict=True)):
            raise ValueError(f"res_native.forward: an individual's weights are not those of its widths {units}")
        width += [v for o, i, _, _ in geo for v in (o, i)]
        feat_sizes += [geo[i2][0] * (1 if mean else geo[i2][2] * geo[i2][3]) for _, i2, _ in blocks]
    ch, ih, iw = plan.in_shape
    pad = plan.stem_padding
    largest = max([(ih + 2 * pad) * (iw + 2 * pad) * ch]
                  + [(hh + 2) * (ww + 2) * o for geo in geometry.values() for o, _, hh, ww in geo])
    if 6 * largest * 16 * 4 > MAX_THREAD_BYTES:                 # a thread's six maps of 16 images
        return None
    keep = [(wt.contiguous(), bias.contiguous()) for wt, bias in layers]     # alive during the call
    # one tensor per network and block: each below glibc's mmap threshold, so that with
    # runtime.keep_freed_memory a pass reuses the last one's memory instead of faulting it in
    outs = [x.new_empty(n, size) for size in feat_sizes]
    logits = x.new_empty(nets, n, pop.classes)
    conv = _ints([v for cv in convs for v in (cv.kernel, cv.stride, cv.padding)])
    block = _ints([v for i1, i2, ip in blocks for v in (i1, i2, -1 if ip is None else ip)])
    tables = [_ints(width), _ints([wt.data_ptr() for wt, _ in keep]), _ints([bias.data_ptr() for _, bias in keep]),
              _ints([t.data_ptr() for t in outs])]
    tasks, pack = _tasks(pop, n, load().ecomp_conv_block())
    params = max(sum(wt.numel() + bias.numel() for wt, bias in member) for member in pop.members)
    done = load().ecomp_resnet_forward(x.data_ptr(), n, ch, ih, iw, plan.stem_pool, nets, nl, _arg(conv), len(blocks),
                                       _arg(block), *[_arg(t) for t in tables], int(mean), logits.data_ptr(),
                                       _arg(tasks), tasks.shape[0], params * pack, torch.get_num_threads())
    if done != 0:
        return None
    nb = len(blocks)
    return logits, [[outs[i * nb + l] for i in range(nets)] for l in range(nb)]
