"""A sequential network read from a ``torch.export`` program's graph (``.pt2``), never executed.

:mod:`ecomp.nets.pt2` gives the archive's nodes (operation, arguments, output shapes) and its
weights as plain tensors; :class:`_Reader` walks the nodes in order and builds the network:
``Conv2d`` (with a ``BatchNorm2d`` after it folded in), ``ReLU``, ``MaxPool2d``/``AvgPool2d``
(window = stride, no padding), ``Dropout`` (ignored), ``Flatten`` and ``Linear``. A program with
a convolution reads as a :class:`~ecomp.nets.convnet.ConvNet`, one without as an :class:`~ecomp.nets.mlp.MLP`.
A program that adds activations (a ResNet) is read by :mod:`ecomp.nets.export_resnet` instead
(:mod:`ecomp.nets.export` picks).
Anything else (a branch, grouped or dilated convolutions, other operations) is refused in one
:class:`CheckpointError` line naming the layer or operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ecomp.errors import CheckpointError
from ecomp.nets.convnet import ConvNet, ConvPlan, Stage
from ecomp.nets.mlp import MLP
from ecomp.nets.structure import Structure
from ecomp.nets.pt2 import Archive, Node, Ref

_SUPPORTED = ("supported: a chain of Conv2d, BatchNorm2d (eval), ReLU, MaxPool2d/AvgPool2d (window = stride, "
              "no padding), Dropout, Flatten and Linear layers")
SAVE_PT2 = ("save a torch.export program (torch.export.save(torch.export.export(model.eval(), (x,)), "
             "'model.pt2')) or the tool's network file with its .json beside it")
_CONV = ("conv2d", "convolution", "_convolution")
_BATCHNORM = ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
              "cudnn_batch_norm", "miopen_batch_norm")
_RELU = ("relu", "relu_")
_POOL = {"max_pool2d": "max", "max_pool2d_with_indices": "max", "avg_pool2d": "avg"}
_IDENTITY = ("dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout", "alpha_dropout_",
             "native_dropout", "clone", "contiguous", "alias", "detach", "detach_", "lift_fresh_copy")
_RESHAPE = ("flatten", "view", "reshape", "_unsafe_view", "unflatten")
_LINEAR = ("linear", "addmm", "mm")
_TRANSPOSE = ("permute", "t", "transpose", "numpy_T")


def pair(w: Tensor, b: Tensor, label: str, where: str) -> tuple[Tensor, Tensor]:
    if not (w.is_floating_point() and b.is_floating_point()):
        raise CheckpointError(f"{where}: {label}'s weights are {w.dtype}, not floating point")
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise CheckpointError(f"{where}: {label} has non-finite weights (NaN or inf)")
    return w.detach().to(torch.float32).contiguous(), b.detach().to(torch.float32).contiguous()


def shapes(plan: ConvPlan) -> list[tuple[tuple[int, ...], tuple[int]]]:
    """The ``(weight, bias)`` shapes of every layer of ``plan``."""
    return [((s.out, n_in, s.kernel, s.kernel) if s.kind == "conv" else (s.out, n_in), (s.out,))
            for s, n_in in zip(plan.stages, plan.inputs())]


@dataclass
class _Layer:
    """One weight layer read from a program's graph, with what follows it."""
    kind: str                     # conv | linear
    label: str                    # "layer '0' (Conv2d)"
    op: str
    w: Tensor
    b: Tensor | None
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    batchnorm: bool = False
    relu: bool = False
    pool: str | None = None
    pool_size: int = 1


class _Reader:
    """Reads a sequential network from a program's nodes, in order; refuses anything else in one line."""

    def __init__(self, archive: Archive, where: str):
        self.a, self.where = archive, where
        self.layers: list[_Layer] = []
        self.transposed: dict[str, str] = {}       # graph name of a weight's transpose -> the weight's placeholder
        self.in_shape: tuple[int, ...] | None = None
        self.flattened = False

    def fail(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {why}")

    @staticmethod
    def label(node: Node) -> str:
        return f"layer {node.module}" if node.module else f"node {node.name!r}"

    def weight(self, ref: object, node: Node, what: str, optional: bool = False) -> Tensor | None:
        if ref is None and optional:
            return None
        if not isinstance(ref, Ref) or ref not in self.a.weights or self.a.weights[ref] not in self.a.state:
            raise self.fail(f"{self.label(node)} ({node.op}) takes its {what} from {ref!r}, not from the "
                            f"program's weights; {_SUPPORTED}")
        t = self.a.state[self.a.weights[ref]]
        if not t.is_floating_point():
            raise self.fail(f"{self.label(node)}'s {what} is {t.dtype}, not floating point")
        return t

    def square(self, value: object, what: str, node: Node, default: int) -> int:
        if value is None or value == []:
            return default
        vals = [value] if isinstance(value, int) else value
        if not isinstance(vals, list) or not vals or not all(isinstance(v, int) for v in vals):
            raise self.fail(f"{self.label(node)} ({node.op}) has a {what} of {value!r}; {_SUPPORTED}")
        if len(set(vals)) != 1:
            raise self.fail(f"{self.label(node)} ({node.op}) has a non-square {what} {tuple(vals)}; only square "
                            f"kernels, strides and padding are supported")
        return vals[0]

    def shape(self, name: str) -> tuple[int | None, ...]:
        return self.a.shapes.get(name, ())

    def close(self, node: Node) -> None:
        """A new weight layer or the Flatten begins: the layer before must have had its ReLU."""
        if self.layers and not self.layers[-1].relu:
            prev = self.layers[-1]
            raise self.fail(f"the program computes {prev.op!r} ({prev.label}) with no ReLU after it, before "
                            f"{node.op!r} ({self.label(node)}); every layer but the last must be followed by a "
                            f"ReLU ({_SUPPORTED})")

    # -- the walk --
    def read(self) -> Structure:
        a = self.a
        if problem := io_problem(a):
            raise self.fail(problem)
        cur = a.inputs[0]
        shape = self.shape(cur)
        if len(shape) == 4:
            self.in_shape = shape[1:]
        elif len(shape) != 2:
            raise self.fail(f"the program's input has shape {shape}; a batch of images (n, C, H, W) or of flat "
                            f"vectors (n, features) is supported")
        activations = {cur}
        for node in a.nodes:
            refs = node.refs()
            acts = [r for r in refs if r not in a.weights and r not in self.transposed]
            unknown = [r for r in acts if r not in activations]
            if unknown:
                raise self.fail(f"{self.label(node)} ({node.op}) takes {unknown[0]!r}, which is neither a weight nor "
                                f"an activation of the program; {_SUPPORTED}")
            if not acts:
                self.on_weights(node, refs)
                continue
            if len(acts) > 1 or acts[0] != cur:
                others = [r for r in dict.fromkeys(acts) if r != cur]
                what = (f"takes two activations, {cur!r} and {others[0]!r}" if cur in acts and others else
                        f"takes {others[0]!r}, an earlier activation than the current {cur!r}")
                raise self.fail(f"{self.label(node)} ({node.op}) {what}: a residual or branching connection, "
                                f"which is not supported; {_SUPPORTED}")
            out = self.step(node, cur)
            if out is not None:
                activations.update(o for o in node.outputs if o)
                cur = out
        if a.outputs[0] != cur:
            raise self.fail(f"the program returns {a.outputs[0]!r}, not its last layer's scores {cur!r}; {_SUPPORTED}")
        return self.build()

    def on_weights(self, node: Node, refs: list[Ref]) -> None:
        """A node on the weights only: the transpose of a Linear's weight (a decomposed program)."""
        dims = node.args.get("dims")
        if (node.op in _TRANSPOSE and len(refs) == 1 and refs[0] in self.a.weights and node.outputs
                and node.outputs[0] and (node.op != "permute" or dims == [1, 0])):
            self.transposed[node.outputs[0]] = refs[0]
            return
        if node.op.endswith("_") and not node.op.startswith("_"):
            raise self.fail(f"the program changes its weights or buffers in place ({node.op!r}, "
                            f"{self.label(node)}): exported in training mode? export the model in evaluation mode "
                            f"(torch.export.export(model.eval(), (x,)))")
        raise self.fail(f"the program computes {node.op!r} on its weights ({self.label(node)}); {_SUPPORTED}")

    def step(self, node: Node, cur: str) -> str | None:
        """Read one node on the activation ``cur``; returns the new activation (None: unchanged)."""
        op = node.op
        out = node.outputs[0] if node.outputs and node.outputs[0] else None
        if op in _CONV:
            self.conv(node)
        elif op in _BATCHNORM:
            self.batchnorm(node)
        elif op in _RELU:
            if not self.layers:
                raise self.fail(f"{self.label(node)} applies a ReLU to the input before any layer; {_SUPPORTED}")
            self.layers[-1].relu = True
        elif op in _POOL:
            self.pooling(node, cur)
        elif op in _IDENTITY:
            pass
        elif op in _RESHAPE:
            self.reshape(node, cur, out)
        elif op in _LINEAR:
            self.linear(node, cur)
        else:
            raise self.fail(f"the program computes {op!r} ({self.label(node)}); {_SUPPORTED}")
        if out is None:
            raise self.fail(f"{self.label(node)} ({op}) returns no tensor; {_SUPPORTED}")
        return out

    def conv(self, node: Node) -> None:
        args, label = node.args, self.label(node)
        if self.flattened:
            raise self.fail(f"{label} is a convolution after the Flatten or a Linear layer; {_SUPPORTED}")
        self.close(node)
        w = self.weight(args.get("weight"), node, "weight")
        b = self.weight(args.get("bias"), node, "bias", optional=True)
        if w.dim() != 4:
            raise self.fail(f"{label} ({node.op}) has a {w.dim()}-D weight {tuple(w.shape)}; only 2-D convolutions "
                            f"(Conv2d) are supported")
        if args.get("transposed", False):
            raise self.fail(f"{label} is a transposed convolution; {_SUPPORTED}")
        if any(args.get("output_padding") or []):
            raise self.fail(f"{label} has output padding {args['output_padding']}; {_SUPPORTED}")
        groups = args.get("groups", 1)
        if groups != 1:
            raise self.fail(f"{label} is a grouped or depthwise convolution (groups={groups}); only groups=1 is "
                            f"supported")
        dilation = self.square(args.get("dilation"), "dilation", node, 1)
        if dilation != 1:
            raise self.fail(f"{label} is a dilated convolution (dilation={dilation}); only dilation 1 is supported")
        if w.shape[2] != w.shape[3]:
            raise self.fail(f"{label} has a non-square kernel {tuple(w.shape[2:])}; only square kernels, strides "
                            f"and padding are supported")
        k = int(w.shape[2])
        stride = self.square(args.get("stride"), "stride", node, 1)
        padding = args.get("padding")
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            elif padding == "same" and stride == 1 and k % 2 == 1:
                padding = (k - 1) // 2
            else:
                raise self.fail(f"{label} has padding={padding!r} (kernel {k}, stride {stride}); only numeric "
                                f"padding (or 'same' with an odd kernel and stride 1) is supported")
        else:
            padding = self.square(padding, "padding", node, 0)
        self.layers.append(_Layer("conv", label, node.op, w, b, k, stride, padding))

    def batchnorm(self, node: Node) -> None:
        args, label = node.args, self.label(node)
        prev = self.layers[-1] if self.layers else None
        if prev is None or prev.relu or prev.batchnorm or prev.pool:
            raise self.fail(f"{label} is a BatchNorm that does not directly follow a Conv2d or Linear layer; "
                            f"only conv -> BatchNorm -> ReLU is supported (it is folded into the layer)")
        if args.get("training", False):
            raise self.fail(f"{label} is a BatchNorm in training mode; export the model in evaluation mode "
                            f"(torch.export.export(model.eval(), (x,)))")
        mean = self.weight(args.get("running_mean"), node, "running_mean", optional=True)
        var = self.weight(args.get("running_var"), node, "running_var", optional=True)
        if mean is None or var is None:
            raise self.fail(f"{label} is a BatchNorm without running statistics (track_running_stats=False); "
                            f"only one with running_mean and running_var can be folded")
        gamma = self.weight(args.get("weight"), node, "weight", optional=True)
        beta = self.weight(args.get("bias"), node, "bias", optional=True)
        eps = args.get("eps", 1e-5)
        n = prev.w.shape[0]
        for what, t in (("running_mean", mean), ("running_var", var), ("weight", gamma), ("bias", beta)):
            if t is not None and tuple(t.shape) != (n,):
                raise self.fail(f"{label}'s {what} has shape {tuple(t.shape)}, expected ({n},)")
        if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise self.fail(f"{label} has eps {eps!r}")
        tensors = [t for t in (mean, var, gamma, beta) if t is not None]
        if not all(torch.isfinite(t).all() for t in tensors):
            raise self.fail(f"{label} has non-finite statistics or weights (NaN or inf)")
        # BN(conv(x)) = scale * (w*x + b - mean) + beta, scale = gamma / sqrt(var + eps): one layer
        # with weights w * scale and bias (b - mean) * scale + beta (computed in float64).
        w = prev.w.to(torch.float64)
        b = prev.b.to(torch.float64) if prev.b is not None else w.new_zeros(n)
        g = gamma.to(torch.float64) if gamma is not None else w.new_ones(n)
        scale = g / torch.sqrt(var.to(torch.float64) + float(eps))
        prev.w = w * scale.view(-1, *[1] * (w.dim() - 1))
        prev.b = (b - mean.to(torch.float64)) * scale + (beta.to(torch.float64) if beta is not None else 0.0)
        prev.batchnorm = True

    def pooling(self, node: Node, cur: str) -> None:
        args, label, kind = node.args, self.label(node), _POOL[node.op]
        prev = self.layers[-1] if self.layers else None
        if prev is None or prev.kind != "conv" or self.flattened:
            raise self.fail(f"{label} pools where no convolution comes before it; pooling is supported only after "
                            f"a Conv2d's ReLU")
        if prev.pool:
            raise self.fail(f"{label} is a second pooling after {prev.label}; one pooling per convolution is "
                            f"supported")
        if not prev.relu and kind == "avg":       # max pooling and ReLU commute; average pooling does not
            raise self.fail(f"{label} average-pools before the ReLU of {prev.label}; the ReLU must come first")
        k = self.square(args.get("kernel_size"), "pooling window", node, 1)
        stride = self.square(args.get("stride"), "pooling stride", node, k)
        padding = self.square(args.get("padding"), "pooling padding", node, 0)
        dilation = self.square(args.get("dilation"), "pooling dilation", node, 1)
        if stride != k or padding != 0 or dilation != 1:
            raise self.fail(f"{label} pools with window {k}, stride {stride}, padding {padding}"
                            f"{f', dilation {dilation}' if dilation != 1 else ''}; only pooling whose stride equals "
                            f"its window, with no padding, is supported")
        if args.get("divisor_override") is not None:
            raise self.fail(f"{label} has divisor_override={args['divisor_override']}; {_SUPPORTED}")
        size = self.shape(cur)
        if args.get("ceil_mode", False) and (len(size) != 4 or any(s is None or s % k for s in size[2:])):
            raise self.fail(f"{label} pools with ceil_mode=True over a {size[2:]} map that its window {k} does not "
                            f"divide; only ceil_mode=False is supported")
        prev.pool, prev.pool_size = kind, k

    def reshape(self, node: Node, cur: str, out: str | None) -> None:
        label = self.label(node)
        before, after = self.shape(cur), self.shape(out) if out else ()
        if len(before) == 2 and len(after) == 2 and before[1:] == after[1:] and before[1] is not None:
            return                                                  # a Flatten of flat vectors: nothing
        if (len(before) == 4 and len(after) == 2 and None not in before[1:]
                and after[1] == before[1] * before[2] * before[3]):
            self.close(node)
            self.flattened = True
            return
        if (len(before) == 2 and len(after) == 4 and not self.layers and self.in_shape is None
                and None not in after[1:] and before[1] == after[1] * after[2] * after[3]):
            self.in_shape = after[1:]                               # flat images unflattened at the start
            return
        raise self.fail(f"{label} ({node.op}) reshapes {before} to {after}; only a Flatten before the first "
                        f"Linear layer is supported")

    def linear(self, node: Node, cur: str) -> None:
        args, label = node.args, self.label(node)
        if node.op == "linear":
            w = self.weight(args.get("weight"), node, "weight")
            b = self.weight(args.get("bias"), node, "bias", optional=True)
        else:                                    # addmm(bias, x, w.T) / mm(x, w.T): a decomposed Linear
            if args.get("beta", 1) != 1 or args.get("alpha", 1) != 1:
                raise self.fail(f"{label} ({node.op}) scales its terms (alpha/beta); {_SUPPORTED}")
            mat2 = args.get("mat2")
            if mat2 not in self.transposed or args.get("mat1" if node.op == "addmm" else "self") != cur:
                raise self.fail(f"the program computes {node.op!r} ({label}) that is not a Linear layer; "
                                f"{_SUPPORTED}")
            w = self.weight(self.transposed[mat2], node, "weight")
            b = self.weight(args.get("self"), node, "bias") if node.op == "addmm" else None
        size = self.shape(cur)
        if len(size) != 2:
            raise self.fail(f"{label} is a Linear layer on a {len(size)}-D activation {size} (no Flatten before it); "
                            f"{_SUPPORTED}")
        if w.dim() != 2 or (b is not None and tuple(b.shape) != (w.shape[0],)):
            raise self.fail(f"{label} has a weight {tuple(w.shape)} and bias "
                            f"{None if b is None else tuple(b.shape)}, not a Linear layer's")
        self.close(node)
        self.flattened = True
        self.layers.append(_Layer("linear", label, node.op, w, b))

    def build(self) -> Structure:
        if not self.layers:
            raise self.fail("the program has no Conv2d or Linear layer")
        last = self.layers[-1]
        if last.kind != "linear":
            raise self.fail(f"the last layer ({last.label}) is a convolution; the last layer must be a Linear "
                            f"classifier")
        if last.relu:
            raise self.fail(f"the last layer ({last.label}) is followed by a ReLU; the classifier's raw scores must "
                            f"be the program's output")
        pairs = [pair(l.w, l.b if l.b is not None else torch.zeros(l.w.shape[0], dtype=l.w.dtype), l.label,
                       self.where) for l in self.layers]
        if all(l.kind == "linear" for l in self.layers):
            for i in range(1, len(pairs)):
                if pairs[i][0].shape[1] != pairs[i - 1][0].shape[0]:
                    raise self.fail(f"{self.layers[i].label} takes {pairs[i][0].shape[1]} inputs but the layer "
                                    f"before gives {pairs[i - 1][0].shape[0]}")
            if len(pairs) < 2:
                raise self.fail("a single linear layer has no hidden layer to compress (at least 2 needed)")
            return MLP(pairs)
        if self.in_shape is None:
            raise self.fail("the program's input shape (C, H, W) is not known")
        if None in self.in_shape:
            raise self.fail(f"the program's input has a symbolic size {self.in_shape}; export it with a fixed image "
                            f"shape")
        stages = tuple(Stage("conv", int(l.w.shape[0]), l.kernel, l.stride, l.padding, l.pool, l.pool_size)
                       if l.kind == "conv" else Stage("linear", int(l.w.shape[0])) for l in self.layers)
        plan = ConvPlan(tuple(int(s) for s in self.in_shape), stages)
        problem = plan.problems()
        if problem:
            raise self.fail(f"the network cannot run: {problem}")
        for l, (w, _), (want, _) in zip(self.layers, pairs, shapes(plan)):
            if tuple(w.shape) != want:
                raise self.fail(f"{l.label}'s weight has shape {tuple(w.shape)}, but the layers before it give "
                                f"{want}")
        return ConvNet(plan, pairs)


def io_problem(a: Archive) -> str | None:
    """Why a program's inputs and outputs are not one batch of images in, one of scores out; or None."""
    if a.other_inputs:
        return (f"the program has inputs or outputs of kinds {sorted(set(a.other_inputs))} (constants, buffer "
                f"mutations or custom objects: exported in training mode?); export model.eval() of a network of layers")
    if len(a.inputs) != 1 or len(a.outputs) != 1:
        return (f"the program takes {len(a.inputs)} tensors and returns {len(a.outputs)}; one batch of images in, "
                f"one of scores out is supported")
    return None


def export_chain(archive: Archive, where: str) -> Structure:
    """The sequential network of the program ``archive`` (an MLP or a :class:`ConvNet`)."""
    return _Reader(archive, where).read()
