"""A user's trained network as the parent (``parent=checkpoint parent.path=...``), read safely.

Accepted:

* the ``state_dict()`` of an ``nn.Sequential`` of (optionally ``Flatten``,) ``Linear``
  and ``ReLU`` layers, as ``torch.save(model.state_dict(), path)`` writes it: keys
  ``"<index>.weight"`` and ``"<index>.bias"`` (layers in index order), or named ones
  (``"layer_1_linear.weight"``, ``"output.bias"``, ``"features.0.weight"``: an
  ``nn.Sequential`` built from an ``OrderedDict``; layers in the state dict's order, which
  ``torch.save`` keeps). A Linear without bias reads as zero bias. Read as an MLP;
* the networks this project saves (``best_network.pt``): an MLP as above, and a convolutional
  network (4-D weights) whose ``best_network.pt.json`` beside it holds its ``"plan"``;
* a ``torch.export`` program (``.pt2``) of a sequential network of ``Conv2d``,
  ``BatchNorm2d`` (evaluation mode), ``ReLU``, ``MaxPool2d``/``AvgPool2d`` (window = stride,
  no padding), ``Dropout`` (ignored), ``Flatten`` and ``Linear`` layers. Its architecture is
  read from the graph's operations in order (strides, padding, pooling, the input's shape);
  a BatchNorm is folded into the layer before it. With a convolution it reads as a
  :class:`~ecomp.nets.convnet.ConvNet`, without one as an MLP. It is read by
  :mod:`ecomp.nets.pt2`, never by ``torch.export.load`` (which may unpickle members with
  ``weights_only=False``).

A state dict holds no activations: a ReLU between consecutive linear layers is
assumed, as in every network this tool builds; nor does it say a convolution's strides,
padding or pooling, so one with 4-D weights needs the tool's ``.json`` beside it. The file's
bytes are read once; its digest and its weights come from those bytes, and whatever in them
is pickled is loaded with ``weights_only=True`` only, so nothing pickled is executed. Every
problem is one :class:`CheckpointError` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ecomp.errors import CheckpointError
from ecomp.nets.convnet import ConvNet, ConvPlan, Stage
from ecomp.nets.network import Layers, Net
from ecomp.nets.pt2 import Archive, Node, Ref, looks_pickled, read_archive, refusal_reason, weights_only_load

_SUPPORTED = ("supported: a chain of Conv2d, BatchNorm2d (eval), ReLU, MaxPool2d/AvgPool2d (window = stride, "
              "no padding), Dropout, Flatten and Linear layers")
_SAVE_PT2 = ("save a torch.export program (torch.export.save(torch.export.export(model.eval(), (x,)), "
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


def read_checkpoint(path: str | Path) -> tuple[Net, str]:
    """The network in ``path`` (float32, CPU): an MLP's ``(weight, bias)`` pairs or a
    :class:`ConvNet`, and the sha256 of the bytes it was read from (the run's config hash
    includes it: new weights, new runs). For the tool's own convolutional file the digest also
    covers the plan read from its ``.json`` (a new plan, new runs)."""
    path = Path(path).expanduser()
    where = f"parent.path={str(path)!r}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{where}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    digest = hashlib.sha256(data)
    if path.suffix == ".pt2":
        net: Net = _export_net(read_archive(data, where), where)
    else:
        state = _load_state(data, where)
        conv = next(((name, t) for name, t in state.items() if t.dim() == 4), None)
        if conv is None:
            net = _layers(state, where)
        else:
            net = _own_convnet(state, path, conv, where)
            digest.update(b"\0plan:" + json.dumps(net.plan.to_dict(), sort_keys=True).encode())
    return net, digest.hexdigest()


def _load_state(data: bytes, where: str) -> dict:
    try:
        state = weights_only_load(data)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike
        why = refusal_reason(exc)
        if why.startswith("needs "):
            raise CheckpointError(f"{where}: the file holds pickled Python objects ({why[6:]}; e.g. a whole "
                                  f"model saved with torch.save(model)), which are not loaded for safety; save "
                                  f"model.state_dict() instead") from None
        if looks_pickled(data) and "Weights only load failed" in str(exc):
            raise CheckpointError(f"{where}: the file holds pickled Python objects that are not plain tensors "
                                  f"({why}), which are not loaded for safety; save model.state_dict()") from None
        raise CheckpointError(f"{where}: not a readable PyTorch file ({why})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where}: expected a state dict (names -> tensors), found {type(state).__name__}")
    return state


# ---- state dicts ---------------------------------------------------------------------------------------------

def _label(prefix: str) -> str:
    """How a layer is named in messages: ``layer 3`` (an index) or ``layer 'features.0'``."""
    return f"layer {prefix}" if prefix.isdigit() else f"layer {prefix!r}"


def _groups(state: dict, where: str) -> list[tuple[str, dict[str, Tensor]]]:
    """The state dict's layers, ``(module name, {"weight": ..., "bias": ...})``: in index order when
    every name is an index, else in the state dict's order."""
    groups: dict[str, dict[str, Tensor]] = {}
    for name, t in state.items():
        prefix, _, kind = str(name).rpartition(".")
        if kind not in ("weight", "bias"):
            guess = " (a BatchNorm?)" if kind in ("running_mean", "running_var", "num_batches_tracked") else ""
            raise CheckpointError(f"{where}: entry {name!r} is not a Linear layer's weight or bias{guess}; "
                                  f"only an nn.Sequential of Linear and ReLU layers is supported")
        groups.setdefault(prefix, {})[kind] = t
    if not groups:
        raise CheckpointError(f"{where}: the state dict holds no layers")
    names = list(groups)
    if all(n.isdigit() for n in names):
        names.sort(key=int)
    return [(n, groups[n]) for n in names]


def _layers(state: dict, where: str) -> Layers:
    layers: Layers = []
    for prefix, entry in _groups(state, where):
        label = _label(prefix)
        w = entry.get("weight")
        if w is None or w.dim() != 2:
            shape = "no weight" if w is None else f"a {w.dim()}-D weight {tuple(w.shape)}"
            hint = " (a Conv?)" if w is not None and w.dim() > 2 else (" (a BatchNorm or LayerNorm?)"
                                                                         if w is not None and w.dim() == 1 else "")
            raise CheckpointError(f"{where}: {label} has {shape}{hint}; only Linear and ReLU layers are supported")
        b = entry.get("bias", torch.zeros(w.shape[0], dtype=w.dtype))
        if b.shape != (w.shape[0],):
            raise CheckpointError(f"{where}: {label}'s bias has shape {tuple(b.shape)}, expected ({w.shape[0]},)")
        if layers and w.shape[1] != layers[-1][0].shape[0]:
            raise CheckpointError(f"{where}: {label} takes {w.shape[1]} inputs but the layer before gives "
                                  f"{layers[-1][0].shape[0]}")
        layers.append(_pair(w, b, label, where))
    if len(layers) < 2:
        raise CheckpointError(f"{where}: a single linear layer has no hidden layer to compress (at least 2 needed)")
    return layers


def _pair(w: Tensor, b: Tensor, label: str, where: str) -> tuple[Tensor, Tensor]:
    if not (w.is_floating_point() and b.is_floating_point()):
        raise CheckpointError(f"{where}: {label}'s weights are {w.dtype}, not floating point")
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise CheckpointError(f"{where}: {label} has non-finite weights (NaN or inf)")
    return w.detach().to(torch.float32).contiguous(), b.detach().to(torch.float32).contiguous()


def _shapes(plan: ConvPlan) -> list[tuple[tuple[int, ...], tuple[int]]]:
    """The ``(weight, bias)`` shapes of every layer of ``plan``."""
    out, c_in, flat, flattened = [], plan.in_shape[0], plan.flat_size(), False
    for s in plan.stages:
        if s.kind == "conv":
            out.append(((s.out, c_in, s.kernel, s.kernel), (s.out,)))
        else:
            if not flattened:
                c_in, flattened = c_in * flat, True
            out.append(((s.out, c_in), (s.out,)))
        c_in = s.out
    return out


def _own_convnet(state: dict, path: Path, conv: tuple[str, Tensor], where: str) -> ConvNet:
    """The tool's own convolutional network file: the weights, and the plan in the ``.json`` beside it."""
    meta_path = path.with_suffix(path.suffix + ".json")
    name, w = conv
    first = f"{_label(name.rpartition('.')[0])} has a 4-D weight {tuple(w.shape)} (a Conv?)"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{where}: {first}; a state dict does not say a convolution's strides, padding or "
                              f"pooling: {_SAVE_PT2}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {meta_path.name} beside it is not readable JSON "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(meta, dict) or "plan" not in meta:
        raise CheckpointError(f"{where}: {first} but {meta_path.name} beside it holds no \"plan\"; a state dict "
                              f"does not say a convolution's strides, padding or pooling: {_SAVE_PT2}")
    try:
        plan = ConvPlan.from_dict(meta["plan"])
        if not all(isinstance(s.kind, str) and isinstance(s.out, int) for s in plan.stages):
            raise TypeError("stage fields")
        problem = plan.problems()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where}: the \"plan\" in {meta_path.name} is not a network plan ({exc})") from None
    if problem:
        raise CheckpointError(f"{where}: the plan in {meta_path.name} cannot run: {problem}")
    groups = _groups(state, where)
    if len(groups) != len(plan.stages):
        raise CheckpointError(f"{where}: the file holds {len(groups)} layers but the plan in {meta_path.name} has "
                              f"{len(plan.stages)}")
    layers: Layers = []
    for (prefix, entry), (ws, bs), stage in zip(groups, _shapes(plan), plan.stages):
        label = _label(prefix)
        w, b = entry.get("weight"), entry.get("bias")
        for what, t, want in (("weight", w, ws), ("bias", b, bs)):
            if t is None:
                raise CheckpointError(f"{where}: {label} has no {what}")
            if tuple(t.shape) != want:
                raise CheckpointError(f"{where}: {label}'s {what} has shape {tuple(t.shape)} but the plan in "
                                      f"{meta_path.name} needs {want} (a {stage.kind} layer)")
        layers.append(_pair(w, b, label, where))
    return ConvNet(plan, layers)


# ---- torch.export programs -----------------------------------------------------------------------------------

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
    def read(self) -> Net:
        a = self.a
        if a.other_inputs:
            raise self.fail(f"the program has inputs or outputs of kinds {sorted(set(a.other_inputs))} (constants, "
                            f"buffer mutations or custom objects: exported in training mode?); export model.eval() "
                            f"of a network of layers")
        if len(a.inputs) != 1 or len(a.outputs) != 1:
            raise self.fail(f"the program takes {len(a.inputs)} tensors and returns {len(a.outputs)}; one batch of "
                            f"images in, one of scores out is supported")
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

    def build(self) -> Net:
        if not self.layers:
            raise self.fail("the program has no Conv2d or Linear layer")
        last = self.layers[-1]
        if last.kind != "linear":
            raise self.fail(f"the last layer ({last.label}) is a convolution; the last layer must be a Linear "
                            f"classifier")
        if last.relu:
            raise self.fail(f"the last layer ({last.label}) is followed by a ReLU; the classifier's raw scores must "
                            f"be the program's output")
        pairs = [_pair(l.w, l.b if l.b is not None else torch.zeros(l.w.shape[0], dtype=l.w.dtype), l.label,
                       self.where) for l in self.layers]
        if all(l.kind == "linear" for l in self.layers):
            for i in range(1, len(pairs)):
                if pairs[i][0].shape[1] != pairs[i - 1][0].shape[0]:
                    raise self.fail(f"{self.layers[i].label} takes {pairs[i][0].shape[1]} inputs but the layer "
                                    f"before gives {pairs[i - 1][0].shape[0]}")
            if len(pairs) < 2:
                raise self.fail("a single linear layer has no hidden layer to compress (at least 2 needed)")
            return pairs
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
        for l, (w, _), (want, _) in zip(self.layers, pairs, _shapes(plan)):
            if tuple(w.shape) != want:
                raise self.fail(f"{l.label}'s weight has shape {tuple(w.shape)}, but the layers before it give "
                                f"{want}")
        return ConvNet(plan, pairs)


def _export_net(archive: Archive, where: str) -> Net:
    return _Reader(archive, where).read()


def check_fits(layers: Net, where: str, input_dim: int, classes: int, data: str) -> None:
    """The network takes the data's features and outputs one score per class."""
    if isinstance(layers, ConvNet):
        c, h, w = layers.plan.in_shape
        takes, gives, images = c * h * w, layers.plan.classes, f" ({c}x{h}x{w} images)"
    else:
        takes, gives, images = layers[0][0].shape[1], layers[-1][0].shape[0], ""
    if takes != input_dim:
        raise CheckpointError(f"{where}: the network takes {takes} inputs{images} but data={data} has "
                              f"{input_dim} features per image")
    if gives != classes:
        raise CheckpointError(f"{where}: the network has {gives} outputs but data={data} has {classes} classes")
