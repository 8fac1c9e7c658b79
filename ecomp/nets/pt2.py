"""A ``torch.export`` archive (``.pt2``) read without running anything it holds.

``torch.export.load`` unpickles the archive's members and, for some of them, does so with
``weights_only=False`` (or plain ``pickle.loads``): a crafted archive runs code. This reader
never calls it. It opens the archive's bytes (read once by the caller) as a zip file and reads:

* the program's graph from ``models/<name>.json`` (JSON: the operations, never executed): each
  node's operation, arguments and outputs (:class:`Node`), which placeholders are which weights,
  the user input and output, and every tensor's shape;
* its weights from ``data/weights/``: raw tensor payloads described by the JSON weights
  config, rebuilt with ``torch.frombuffer``; a pickled payload only through
  ``torch.load(weights_only=True)``.

Every other member that is a pickle or a ``torch.save`` file (the sample inputs, say) is
checked with ``torch.load(weights_only=True)`` too, and refused when that fails; a
TorchScript or opaque Python object among the constants is refused outright. Every
refusal is one :class:`ArchiveError` line naming the member and why.
"""

from __future__ import annotations

import io
import json
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ecomp.errors import CheckpointError

# The serialised ScalarType codes (torch._export.serde.schema) a network's weights may have
# (int64: a BatchNorm's ``num_batches_tracked`` buffer).
_DTYPES = {5: torch.int64, 6: torch.float16, 7: torch.float32, 8: torch.float64, 13: torch.bfloat16}
# Serialised argument forms read as plain values (``as_tensor`` becomes a :class:`Ref`).
_PLAIN_ARGS = ("as_int", "as_float", "as_bool", "as_string", "as_ints", "as_floats", "as_bools", "as_strings")
_MODEL = re.compile(r"^(?P<prefix>(?:[^/]+/)?)models/(?P<name>[^/]+)\.json$")
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")          # a pickle (protocol >= 2), a torch.save zip


class ArchiveError(CheckpointError):
    """The archive cannot be read safely; one line naming the member."""


class Ref(str):
    """An argument that is a tensor of the graph, by its graph name (``"p_0_weight"``, ``"relu"``)."""


@dataclass(frozen=True)
class Other:
    """An argument in a serialised form this reader does not interpret (``as_sym_int``, ...)."""
    form: str


@dataclass(frozen=True)
class Node:
    op: str                           # "conv2d" (see :func:`_op`)
    target: str                       # "torch.ops.aten.conv2d.default"
    name: str                         # the node's name in the graph
    args: dict[str, object]           # argument name -> Ref | None | int | float | bool | str | list | Other
    outputs: tuple[str, ...]          # graph names of the tensors it returns ("" for one that is not a tensor)
    module: str = ""                  # the module it came from, "features.0 (Conv2d)", when the graph says

    def refs(self) -> list[Ref]:
        """Every tensor it takes, in argument order."""
        out: list[Ref] = []
        for v in self.args.values():
            out.extend(r for r in (v if isinstance(v, list) else [v]) if isinstance(r, Ref))
        return out


@dataclass(frozen=True)
class Archive:
    ops: list[str]                    # the graph's operations in order, e.g. ["flatten", "linear", "relu"]
    state: dict[str, Tensor]          # weight name -> tensor, e.g. "1.weight"
    nodes: tuple[Node, ...] = ()      # the graph's operations, in order
    weights: dict[str, str] = field(default_factory=dict)    # placeholder -> weight name ("p_0_weight" -> "0.weight")
    inputs: tuple[str, ...] = ()      # the user inputs' placeholders
    outputs: tuple[str, ...] = ()     # the user outputs' graph names
    other_inputs: tuple[str, ...] = ()  # kinds of any other inputs (constants, custom objects, tokens)
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)  # tensor -> sizes (None: symbolic)


def read_archive(data: bytes, where: str) -> Archive:
    """The graph's operations and the weights of the one program in the archive ``data``."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ArchiveError(f"{where}: not a torch.export archive (not a zip file)") from None
    names = zf.namelist()
    models = [m for m in map(_MODEL.match, names) if m]
    if len(models) != 1:
        raise ArchiveError(f"{where}: not a torch.export archive of one program "
                           f"({len(models)} models/<name>.json members)")
    prefix, name = models[0]["prefix"], models[0]["name"]
    order = _member(zf, f"{prefix}byteorder", where, required=False)
    if order is not None and order.decode("utf-8", "replace").strip() != sys.byteorder:
        raise ArchiveError(f"{where}: member '{prefix}byteorder' says {order.decode('utf-8', 'replace').strip()[:20]!r}; "
                           f"this machine is {sys.byteorder}")
    weights_dir = f"{prefix}data/weights/"
    payloads = set()
    config = _json(zf, f"{weights_dir}{name}_weights_config.json", where).get("config", {})
    state = {fqn: _tensor(zf, weights_dir, meta, fqn, where) for fqn, meta in config.items()}
    payloads.update(weights_dir + meta["path_name"] for meta in config.values())
    constants = f"{prefix}data/constants/{name}_constants_config.json"
    if constants in names:
        for fqn, meta in _json(zf, constants, where).get("config", {}).items():
            member = f"{prefix}data/constants/{meta.get('path_name')}"
            raise ArchiveError(f"{where}: member {member!r} is a constant ({fqn!r}): constants, TorchScript "
                               f"and Python objects are not read (a network of layers has none)")
    for member in names:
        if member not in payloads:
            _check_pickle(zf, member, where)
    program = _json(zf, f"{prefix}models/{name}.json", where)
    try:
        graph = program["graph_module"]["graph"]
        nodes = tuple(_node(node) for node in graph["nodes"])
        weights, inputs, outputs, other = _signature(program["graph_module"]["signature"])
        shapes = {t: tuple(int(s["as_int"]) if "as_int" in s else None for s in meta["sizes"])
                  for t, meta in graph.get("tensor_values", {}).items()}
    except (KeyError, TypeError, AttributeError, ValueError, StopIteration):
        raise ArchiveError(f"{where}: member '{prefix}models/{name}.json' is not a serialised program") from None
    return Archive([n.op for n in nodes], state, nodes, weights, inputs, outputs, other, shapes)


def _node(node: dict) -> Node:
    args = {str(i["name"]): _arg(i["arg"]) for i in node.get("inputs", [])}
    outputs = tuple(_arg(o) if "as_tensor" in o else "" for o in node.get("outputs", []))
    return Node(_op(node["target"]), node["target"], str(node.get("name", "")), args, outputs,
                _module((node.get("metadata") or {}).get("nn_module_stack", "")))


def _arg(arg: dict) -> object:
    form, value = next(iter(arg.items()))
    if form == "as_tensor":
        return Ref(value["name"])
    if form in ("as_tensors", "as_optional_tensors"):
        return [Ref(v["name"]) if isinstance(v, dict) and "name" in v else
                (Ref(v["as_tensor"]["name"]) if isinstance(v, dict) and "as_tensor" in v else None) for v in value]
    if form == "as_none":
        return None
    if form in _PLAIN_ARGS:
        return value
    return Other(form)


def _module(stack: str) -> str:
    """``"L__self__,,...Sequential;L__self___features_0,features.0,torch.nn...Conv2d"`` -> ``"features.0 (Conv2d)"``."""
    parts = stack.split(";")[-1].split(",") if stack else []
    if len(parts) < 3 or not parts[1]:
        return ""
    return f"{','.join(parts[1:-1])} ({parts[-1].rsplit('.', 1)[-1]})"


def _signature(sig: dict) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    weights, inputs, other = {}, [], []
    for spec in sig["input_specs"]:
        kind, body = next(iter(spec.items()))
        if kind in ("parameter", "buffer"):
            weights[body["arg"]["name"]] = body[f"{kind}_name"]
        elif kind == "user_input" and "as_tensor" in body["arg"]:
            inputs.append(body["arg"]["as_tensor"]["name"])
        else:
            other.append(kind)
    outputs = []
    for spec in sig["output_specs"]:
        kind, body = next(iter(spec.items()))
        if kind == "user_output" and "as_tensor" in body["arg"]:
            outputs.append(body["arg"]["as_tensor"]["name"])
        else:
            other.append(kind)
    return weights, tuple(inputs), tuple(outputs), tuple(other)


def _member(zf: zipfile.ZipFile, member: str, where: str, required: bool = True) -> bytes | None:
    try:
        return zf.read(member)
    except KeyError:
        if required:
            raise ArchiveError(f"{where}: not a torch.export archive (no member {member!r})") from None
        return None
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
        raise ArchiveError(f"{where}: member {member!r} is unreadable ({exc})") from None


def _json(zf: zipfile.ZipFile, member: str, where: str) -> dict:
    try:
        return json.loads(_member(zf, member, where))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"{where}: member {member!r} is not JSON ({exc})") from None


def _op(target: str) -> str:
    """``torch.ops.aten.linear.default`` -> ``linear``; anything not an ATen operation is kept whole."""
    parts = target.split(".")
    return parts[3] if len(parts) >= 4 and parts[:3] == ["torch", "ops", "aten"] else target


def _tensor(zf: zipfile.ZipFile, weights_dir: str, meta: dict, fqn: str, where: str) -> Tensor:
    member = weights_dir + str(meta.get("path_name"))
    raw = _member(zf, member, where)
    if meta.get("use_pickle"):
        value = _safe_load(raw, member, where)
        if not isinstance(value, Tensor):
            raise ArchiveError(f"{where}: member {member!r} ({fqn!r}) holds a {type(value).__name__}, not a tensor")
        return value
    try:
        tm = meta["tensor_meta"]
        dtype = _DTYPES[tm["dtype"]]
        sizes = [int(s["as_int"]) for s in tm["sizes"]]
        strides = [int(s["as_int"]) for s in tm["strides"]]
        offset = int(tm["storage_offset"]["as_int"])
    except KeyError as exc:
        raise ArchiveError(f"{where}: weight {fqn!r} has no usable description ({exc} missing or dtype not one of "
                           f"float16, bfloat16, float32, float64, int64)") from None
    item = torch.empty(0, dtype=dtype).element_size()
    if len(raw) % item:
        raise ArchiveError(f"{where}: member {member!r} holds {len(raw)} bytes, not whole {dtype} values for {fqn!r}")
    flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    needed = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) + 1 if all(sizes) else 0
    if min(sizes, default=1) < 0 or needed > flat.numel():
        raise ArchiveError(f"{where}: member {member!r} holds {flat.numel()} values, too few for {fqn!r} {sizes}")
    if not all(sizes):
        return torch.zeros(sizes, dtype=dtype)
    return torch.as_strided(flat, sizes, strides, offset).clone()


def _check_pickle(zf: zipfile.ZipFile, member: str, where: str) -> None:
    """A member that is a pickle or a ``torch.save`` file must load with ``weights_only=True``."""
    with zf.open(member) as f:
        head = f.read(4)
    if looks_pickled(head):
        _safe_load(_member(zf, member, where), member, where)


def looks_pickled(raw: bytes) -> bool:
    """The bytes start like a pickle (protocol >= 2) or a ``torch.save`` zip."""
    return raw.startswith(_PICKLE_MAGIC)


def weights_only_load(raw: bytes) -> object:
    """``torch.load(weights_only=True)`` of ``raw``, quietly (its protocol warnings are not the user's concern)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def refusal_reason(exc: Exception) -> str:
    """What the weights-only unpickler refused, in a few words: ``needs os.system``, ``Unsupported operand 149``."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"needs {found.group(1)}"
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    lines = (detail.group(1) if detail else text).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def _safe_load(raw: bytes, member: str, where: str) -> object:
    try:
        return weights_only_load(raw)
    except Exception as exc:  # noqa: BLE001 - any refusal of the weights-only unpickler
        why = refusal_reason(exc)
        raise ArchiveError(f"{where}: member {member!r} holds pickled objects that are not plain tensors ({why}); "
                           f"refused, nothing in it was run") from None
