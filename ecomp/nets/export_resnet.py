"""A residual network read from a ``torch.export`` program's graph (``.pt2``), never executed.

A program whose graph adds two activations is read here (:func:`ecomp.nets.export.export_net`
sends it); one without an addition is a chain, read by :mod:`ecomp.nets.export_graph`. The graph
is first turned into a small dataflow of values (:class:`Val`), one per operation, from an
allow-list of operations: convolution (a BatchNorm after it folded in, as the chain's reader
folds it), ReLU, max pooling, the addition, flatten / view, mean or adaptive average pooling over
the whole map, Linear, and the no-ops of inference (dropout, clone, ...). Any other operation is
refused in one line naming it. The dataflow is then matched against a
:class:`~ecomp.nets.resnet.ResPlan`: a stem (conv, ReLU, optionally torchvision's 3x3 stride-2
max pooling), basic blocks (``conv3x3 -> ReLU -> conv3x3``, added to the block's input or to its
1x1 projection, then a ReLU), global average pooling and one Linear classifier. Every addition
must be a basic block's and every value must belong to the network; anything else is refused in
one line saying what was found. A stage begins at the first block and at every block with a
projection or a stride.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from ecomp.errors import CheckpointError
from ecomp.nets.export_graph import (_BATCHNORM, _CONV, _IDENTITY, _LINEAR, _RELU, _RESHAPE, _TRANSPOSE, _Layer,
                                     _Reader, io_problem, pair)
from ecomp.nets.pt2 import Archive, Node
from ecomp.nets.resnet import ResNet, ResPlan, units_of

_ADD = ("add", "add_")
_MAXPOOL = ("max_pool2d", "max_pool2d_with_indices")
_GAP = ("mean", "adaptive_avg_pool2d")
_ALLOWED = frozenset((*_CONV, *_BATCHNORM, *_RELU, *_MAXPOOL, *_ADD, *_GAP, *_RESHAPE, *_LINEAR, *_TRANSPOSE,
                      *_IDENTITY))
_OPERATIONS = ("a residual network is read from convolution, BatchNorm (eval), ReLU, max pooling, add, flatten/view, "
               "mean or adaptive average pooling, Linear and dropout operations only")
_SUPPORTED = ("supported: a conv-BN-ReLU stem (then optionally 3x3 stride-2 max pooling), basic blocks (conv3x3-BN-"
              "ReLU-conv3x3-BN added to the block's input or to its 1x1 conv-BN projection, then ReLU), global "
              "average pooling and one Linear classifier")


def has_residual_adds(archive: Archive) -> bool:
    """The program adds tensors: it is read as a residual network."""
    return any(n.op in _ADD for n in archive.nodes)


@dataclass(eq=False)
class Val:
    """One value of the program's dataflow: what computed it and from which values."""
    kind: str                          # input | conv | relu | pool | add | gap | flatten | linear
    src: tuple["Val", ...] = ()
    node: Node | None = None
    layer: _Layer | None = None        # conv, linear: weights (BatchNorm folded in) and geometry
    pool: tuple[int, int, int] = (0, 0, 0)   # pool: window, stride, padding


def describe(v: Val, depth: int = 3) -> str:
    """A value as a short expression: ``relu(conv3x3/2(the input))``."""
    if v.kind == "input":
        return "the input"
    if depth == 0:
        return "..."
    inner = ", ".join(describe(s, depth - 1) for s in v.src)
    if v.kind == "conv":
        k, s = v.layer.kernel, v.layer.stride
        return f"conv{k}x{k}{f'/{s}' if s != 1 else ''}({inner})"
    if v.kind == "pool":
        return f"maxpool{v.pool[0]}x{v.pool[0]}({inner})"
    return f"{v.kind}({inner})"


@dataclass
class _Block:
    conv1: Val
    conv2: Val
    projection: Val | None
    vals: tuple[Val, ...]              # every value the block computes


class _ResReader:
    def __init__(self, archive: Archive, where: str):
        self.a, self.where = archive, where
        self.ops = _Reader(archive, where)         # the chain reader's checks of one operation, and its folding
        self.input = Val("input")
        self.vals: dict[str, Val] = {}
        self.made: list[Val] = []
        self.users: Counter[str] = Counter()
        self.in_shape: tuple[int | None, ...] | None = None

    def fail(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {why}")

    def label(self, v_or_node) -> str:
        node = v_or_node.node if isinstance(v_or_node, Val) else v_or_node
        return _Reader.label(node) if node is not None else "the input"

    # -- the dataflow --
    def read(self) -> ResNet:
        a = self.a
        if problem := io_problem(a):
            raise self.fail(problem)
        shape = a.shapes.get(a.inputs[0], ())
        if len(shape) == 4:
            self.in_shape = shape[1:]
        elif len(shape) != 2:
            raise self.fail(f"the program's input has shape {shape}; a batch of images (n, C, H, W) is supported")
        self.vals[a.inputs[0]] = self.input
        for node in a.nodes:
            self.users.update(r for r in dict.fromkeys(node.refs()))
        for node in a.nodes:
            if node.op not in _ALLOWED:
                raise self.fail(f"the program computes {node.op!r} ({self.label(node)}); {_OPERATIONS}")
            refs = node.refs()
            acts = [r for r in refs if r in self.vals]
            unknown = [r for r in refs if r not in self.vals and r not in a.weights and r not in self.ops.transposed]
            if unknown:
                raise self.fail(f"{self.label(node)} ({node.op}) takes {unknown[0]!r}, which is neither a weight nor "
                                f"an activation of the program")
            if not acts:
                self.ops.on_weights(node, refs)
                continue
            out = node.outputs[0] if node.outputs and node.outputs[0] else None
            if out is None:
                raise self.fail(f"{self.label(node)} ({node.op}) returns no tensor; {_SUPPORTED}")
            v = self.step(node, acts, out)
            if v is not self.vals.get(acts[0]) and v not in self.made:
                self.made.append(v)
            self.vals[out] = v
        out = self.vals.get(a.outputs[0])
        if out is None:
            raise self.fail(f"the program returns {a.outputs[0]!r}, which it does not compute from its input")
        return self.match(out)

    def step(self, node: Node, acts: list[str], out: str) -> Val:
        op, label = node.op, self.label(node)
        if op in _ADD:
            if len(acts) != 2 or node.args.get("alpha", 1) != 1:
                raise self.fail(f"{label} ({op}) adds {'a scaled term' if len(acts) == 2 else 'a constant'}; only "
                                f"the sum of two activations (a residual connection) is read")
            return Val("add", (self.vals[acts[0]], self.vals[acts[1]]), node)
        if len(set(acts)) != 1:
            raise self.fail(f"{label} ({op}) takes two activations, {acts[0]!r} and {acts[1]!r}: a branching "
                            f"connection that is not a basic block's addition; {_SUPPORTED}")
        src = self.vals[acts[0]]
        if op in _CONV:
            self.ops.layers, self.ops.flattened = [], False
            self.ops.conv(node)
            return Val("conv", (src,), node, self.ops.layers[0])
        if op in _BATCHNORM:
            if src.kind != "conv" or src.layer.batchnorm:
                raise self.fail(f"{label} is a BatchNorm of {describe(src)}, not directly of a convolution; only "
                                f"conv -> BatchNorm is read (it is folded into the convolution)")
            if self.users[acts[0]] > 1:
                raise self.fail(f"{label} normalises {self.label(src)}, whose output is also read elsewhere; a "
                                f"convolution's output may only go to its BatchNorm")
            self.ops.layers = [src.layer]
            self.ops.batchnorm(node)                  # folds it into src.layer
            return src
        if op in _RELU:
            return Val("relu", (src,), node)
        if op in _MAXPOOL:
            return Val("pool", (src,), node, pool=self.pooling(node))
        if op in _GAP:
            return Val("gap", (src,), node, pool=self.global_pool(node, acts[0]))
        if op in _IDENTITY:
            return src
        if op in _RESHAPE:
            return self.reshape(node, src, acts[0], out)
        if op in _LINEAR:
            self.ops.layers, self.ops.flattened = [], False
            self.ops.linear(node, acts[0])
            return Val("linear", (src,), node, self.ops.layers[0])
        raise self.fail(f"{label} ({op}) computes on an activation what is read only on weights; {_SUPPORTED}")

    def pooling(self, node: Node) -> tuple[int, int, int]:
        args, sq = node.args, self.ops.square
        k = sq(args.get("kernel_size"), "pooling window", node, 1)
        s = sq(args.get("stride"), "pooling stride", node, k)
        p = sq(args.get("padding"), "pooling padding", node, 0)
        if sq(args.get("dilation"), "pooling dilation", node, 1) != 1 or args.get("ceil_mode", False):
            raise self.fail(f"{self.label(node)} pools with dilation or ceil_mode=True; {_SUPPORTED}")
        return k, s, p

    def global_pool(self, node: Node, src: str) -> tuple[int, int, int]:
        shape = self.a.shapes.get(src, ())
        if node.op == "mean":
            dims = node.args.get("dim")
            ok = len(shape) == 4 and isinstance(dims, list) and sorted(d % 4 for d in dims) == [2, 3]
        else:
            ok = node.args.get("output_size") in ([1, 1], [1])
        if not ok:
            raise self.fail(f"{self.label(node)} ({node.op}) averages {shape} over {node.args.get('dim', node.args.get('output_size'))}; "
                            f"only the average over each whole map (global average pooling) is read")
        return 0, 0, 0

    def reshape(self, node: Node, src: Val, name: str, out: str) -> Val:
        before, after = self.a.shapes.get(name, ()), self.a.shapes.get(out, ())
        if before == after:
            return src
        if (src is self.input and len(before) == 2 and len(after) == 4 and self.in_shape is None
                and None not in after[1:] and before[1] == after[1] * after[2] * after[3]):
            self.in_shape = after[1:]                               # flat images unflattened at the start
            return src
        if len(before) == 4 and len(after) == 2 and None not in before[1:] and after[1] == before[1] * before[2] * before[3]:
            return src if src.kind == "gap" else Val("flatten", (src,), node)
        raise self.fail(f"{self.label(node)} ({node.op}) reshapes {before} to {after}; only the flattening of the "
                        f"pooled features before the classifier is read")

    # -- the match --
    def block(self, add: Val) -> _Block:
        """The basic block whose addition is ``add``; refused in one line if it is not one."""
        for main, short in (add.src, add.src[::-1]):
            if main.kind != "conv" or main.src[0].kind != "relu" or main.src[0].src[0].kind != "conv":
                continue
            relu1 = main.src[0]
            conv1 = relu1.src[0]
            x = conv1.src[0]
            proj = None
            if short is not x:
                if short.kind != "conv" or short.src[0] is not x:
                    continue
                proj = short
            found = (conv1.layer.kernel, conv1.layer.padding, main.layer.kernel, main.layer.stride, main.layer.padding)
            if found != (3, 1, 3, 1, 1) or (proj is not None and (proj.layer.kernel, proj.layer.padding,
                                                                   proj.layer.stride) != (1, 0, conv1.layer.stride)):
                raise self.fail(f"{self.label(add)} adds {describe(main)} and {describe(short)} with padding "
                                f"{conv1.layer.padding}/{main.layer.padding}: a block that is not a basic block "
                                f"(3x3 convolutions, padding 1, the second of stride 1; a 1x1 projection of the "
                                f"first's stride, no padding); {_SUPPORTED}")
            return _Block(conv1, main, proj, (conv1, relu1, main, add) + ((proj,) if proj is not None else ()))
        a, b = add.src
        raise self.fail(f"{self.label(add)} adds {describe(a)} and {describe(b)}: a residual or branching connection "
                        f"that is not a basic block's; {_SUPPORTED}")

    def match(self, out: Val) -> ResNet:
        blocks = {id(v): self.block(v) for v in self.made if v.kind == "add"}
        used: list[Val] = [out]
        if out.kind != "linear":
            raise self.fail(f"the program returns {describe(out)}, not a Linear classifier's scores; {_SUPPORTED}")
        h = out.src[0]
        if h.kind == "flatten":
            used.append(h)
            h = h.src[0]
        if h.kind != "gap":
            raise self.fail(f"the classifier reads {describe(h)}, not the global average pooling of the last "
                            f"block; {_SUPPORTED}")
        used.append(h)
        h = h.src[0]
        chain: list[_Block] = []
        while h.kind == "relu" and h.src[0].kind == "add":
            b = blocks[id(h.src[0])]
            chain.append(b)
            used += [h, *b.vals]
            h = b.conv1.src[0]
        stem_pool = 0
        if h.kind == "pool":
            if h.pool != (3, 2, 1):
                k, s, p = h.pool
                raise self.fail(f"{self.label(h)} max-pools with window {k}, stride {s}, padding {p} after the stem; "
                                f"only torchvision's 3x3, stride 2, padding 1 is read there; {_SUPPORTED}")
            used.append(h)
            stem_pool, h = 3, h.src[0]
        if not (h.kind == "relu" and h.src[0].kind == "conv" and h.src[0].src[0] is self.input):
            raise self.fail(f"the first block reads {describe(h)}, not a stem convolution of the input with its "
                            f"ReLU; {_SUPPORTED}")
        stem = h.src[0]
        used += [h, stem]
        stray = [v for v in self.made if all(v is not u for u in used)]
        if stray:
            raise self.fail(f"{self.label(stray[0])} computes {describe(stray[0])}, which is not part of the residual "
                            f"network's path from the input to the scores; {_SUPPORTED}")
        return self.build(stem, stem_pool, chain[::-1], out)

    def build(self, stem: Val, stem_pool: int, chain: list[_Block], fc: Val) -> ResNet:
        if self.in_shape is None or None in self.in_shape:
            raise self.fail(f"the program's input shape (C, H, W) is {self.in_shape or 'not known'}; export it with "
                            f"a fixed image shape")
        blocks, strides, projections = [], [], []
        order: list[Val] = [stem]
        for i, b in enumerate(chain):
            stride = b.conv1.layer.stride
            if i == 0 or b.projection is not None or stride != 1:
                blocks.append(0)
                strides.append(stride)
                projections.append(b.projection is not None)
            blocks[-1] += 1
            order += [b.conv1, b.conv2] + ([b.projection] if b.projection is not None else [])
        order.append(fc)
        layers = [pair(v.layer.w, v.layer.b if v.layer.b is not None else torch.zeros(v.layer.w.shape[0]),
                       self.label(v), self.where) for v in order]
        s = stem.layer
        plan = ResPlan(tuple(int(d) for d in self.in_shape), int(fc.layer.w.shape[0]), (), tuple(blocks),
                       tuple(strides), tuple(projections), s.kernel, s.stride, s.padding, stem_pool)
        plan = plan.with_units((0,) * plan.n_groups())
        plan = plan.with_units(units_of(plan, layers))
        problem = plan.problems()
        if problem:
            raise self.fail(f"the residual network cannot run: {problem}")
        try:
            return ResNet(plan, layers)
        except ValueError as exc:
            raise self.fail(f"the residual network's weights do not fit its blocks ({exc})") from None


def export_resnet(archive: Archive, where: str) -> ResNet:
    """The residual network of the program ``archive`` (refused in one line if it is not one)."""
    return _ResReader(archive, where).read()
