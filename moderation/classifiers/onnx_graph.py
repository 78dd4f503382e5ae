"""Run a small, fixed ONNX graph in torch, from weights stored as safetensors.

The conversion (``graph_to_safetensors``) runs once, offline, with the ``onnx`` package: every
initializer becomes a safetensors tensor and the node list is written as JSON in the
safetensors metadata. At run time ``load_graph_module`` rebuilds the graph as a
``torch.nn.Module`` from those bytes alone, so workers need neither ``onnx`` nor
``onnxruntime``, the model can run on a GPU, and nothing in the artifact can execute code
(no pickle, no eval/exec: each node maps to one torch functional op from a fixed whitelist).

Only the ops that the models we ship need are implemented, each with the attribute subset
they use; anything else (an unknown op, attribute or attribute value) is refused when the
module is built, never half-way through a batch.

This module imports torch at module level (``GraphModule`` subclasses ``torch.nn.Module``);
import it from worker-side code only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict, cast

import torch
import torch.nn.functional as F

#: ``format`` value in the safetensors metadata; bump it when the layout or op semantics change.
FORMAT = "moderation-onnx-graph/1"

#: An ONNX attribute value in plain JSON form (tensor- and graph-valued attributes have none).
AttrValue = int | float | str | list[int] | list[float] | list[str]

AutoPad = Literal["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]
_AUTO_PADS: tuple[AutoPad, ...] = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")

#: Opset at which Softmax stopped flattening its input to 2-D around ``axis``.
_SOFTMAX_OPSET_CHANGE = 13


class NodeSpec(TypedDict):
    """One ONNX node as stored in the ``graph`` metadata entry."""

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, AttrValue]


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def graph_to_safetensors(onnx_path: Path) -> bytes:
    """``onnx_to_safetensors`` of the ONNX file at ``onnx_path`` (errors name the path; OSError
    when it cannot be read)."""
    return onnx_to_safetensors(Path(onnx_path).read_bytes(), name=str(onnx_path))


def onnx_to_safetensors(raw: bytes, *, name: str = "<onnx>") -> bytes:
    """Convert an ONNX model into safetensors bytes that ``load_graph_module`` can run.

    Every initializer is stored as a tensor under its ONNX name with its dtype unchanged; the
    metadata holds ``format``, ``graph`` (the node list as JSON, in graph order), ``inputs``
    and ``outputs`` (JSON lists of names; initializers are not inputs) and ``source_sha256``
    (of the ONNX file's bytes). The result is byte-for-byte reproducible for a given file.

    Args:
        raw: the ``.onnx`` file's bytes. Its weights must be inside it, so that
            ``source_sha256`` covers everything that was converted.
        name: where the bytes came from, for error messages.

    Returns:
        The safetensors file contents.

    Raises:
        ValueError: the model has external or sparse initializers, duplicate initializer
            names, nodes outside the default ONNX domain, an attribute with no plain JSON
            form, or Softmax nodes at an opset whose semantics ``GraphModule`` does not implement.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import save

    model = onnx.load_model_from_string(raw)
    graph = model.graph
    if len(graph.sparse_initializer):
        raise ValueError(f"{name}: sparse initializers are not supported")

    tensors: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(
                f"{name}: initializer {init.name!r} is stored in an external file, which "
                "source_sha256 would not cover; save the model with its weights inside it"
            )
        if init.name in tensors:
            raise ValueError(f"{name}: initializer {init.name!r} appears twice")
        tensors[init.name] = np.ascontiguousarray(numpy_helper.to_array(init))

    nodes: list[NodeSpec] = []
    for index, node in enumerate(graph.node):
        where = f"{name}: node {index} ({node.op_type}, name {node.name!r})"
        if node.domain not in ("", "ai.onnx"):
            raise ValueError(f"{where}: domain {node.domain!r} is not the default ONNX domain")
        attrs = {attr.name: _attr_to_json(attr, where=where) for attr in node.attribute}
        nodes.append({"op": node.op_type, "inputs": list(node.input), "outputs": list(node.output), "attrs": attrs})

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset >= _SOFTMAX_OPSET_CHANGE and any(n["op"] == "Softmax" for n in nodes):
        # GraphModule implements the opset < 13 Softmax (input coerced to 2-D around axis);
        # converting a newer graph would silently change what its Softmax computes.
        raise ValueError(f"{name}: Softmax at opset {opset} (>= 13) is not supported")

    metadata = {
        "format": FORMAT,
        "graph": _json(nodes),
        "inputs": _json([i.name for i in graph.input if i.name not in tensors]),
        "outputs": _json([o.name for o in graph.output]),
        "source_sha256": hashlib.sha256(raw).hexdigest(),
    }
    return _canonical_header(save(tensors, metadata=metadata))


def _attr_to_json(attr: object, *, where: str) -> AttrValue:
    from onnx import AttributeProto

    a = cast(AttributeProto, attr)
    kind = a.type
    if kind == AttributeProto.INT:
        return int(a.i)
    if kind == AttributeProto.FLOAT:
        return float(a.f)
    if kind == AttributeProto.STRING:
        return a.s.decode("utf-8")
    if kind == AttributeProto.INTS:
        return [int(v) for v in a.ints]
    if kind == AttributeProto.FLOATS:
        return [float(v) for v in a.floats]
    if kind == AttributeProto.STRINGS:
        return [v.decode("utf-8") for v in a.strings]
    raise ValueError(
        f"{where}: attribute {a.name!r} is of type {AttributeProto.AttributeType.Name(kind)}, "
        "which has no plain JSON form (only INT, FLOAT, STRING and their lists are supported)"
    )


def _canonical_header(blob: bytes) -> bytes:
    """Rewrite a safetensors header with sorted keys.

    safetensors (0.8) keeps the metadata in a Rust HashMap, so its key order, and with it the
    file's bytes, changes from call to call; tensor data and offsets are unaffected.
    """
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    text = _json(header).encode("ascii")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise ValueError(f"not a safetensors file: {len(data)} bytes, shorter than its 8-byte header length")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError(f"not a safetensors file: header length {size} exceeds the {len(data) - 8} bytes after it")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a safetensors file: header is not JSON ({e})") from e
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("safetensors header has no __metadata__; expected one with format " + repr(FORMAT))
    return meta


def _json_names(meta: Mapping[str, str], key: str) -> list[str]:
    try:
        value = json.loads(meta[key])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"metadata {key!r} is missing or not JSON") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"metadata {key!r} must be a JSON list of names, got {value!r}")
    return value


def load_graph_module(data: bytes) -> GraphModule:
    """Build a ``GraphModule`` (in eval mode, on the CPU) from ``graph_to_safetensors`` bytes.

    The caller is responsible for having verified the SHA-256 of ``data``.

    Args:
        data: the safetensors file contents.

    Returns:
        The module, with every tensor of the file registered as a buffer.

    Raises:
        ValueError: ``data`` is not safetensors, its metadata ``format`` is not ``FORMAT``,
            the metadata is malformed, or the graph uses an unsupported op or attribute.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta = _read_metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        nodes = json.loads(meta["graph"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError("metadata 'graph' is missing or not JSON") from e
    if not isinstance(nodes, list):
        raise ValueError(f"metadata 'graph' must be a JSON list of nodes, got {type(nodes).__name__}")
    try:
        tensors = load(data)
    except SafetensorError as e:
        raise ValueError(f"safetensors data is malformed: {e}") from e
    module = GraphModule(
        nodes=nodes,
        tensors=tensors,
        input_names=_json_names(meta, "inputs"),
        output_names=_json_names(meta, "outputs"),
    )
    return module.eval()


# --------------------------------------------------------------------------- graph execution

_Kernel = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class _Step:
    inputs: tuple[str, ...]  # "" marks an omitted optional input
    output: str
    kernel: _Kernel
    release: tuple[str, ...]  # intermediate values last used by this step


class _Attrs:
    """Typed, validated access to one node's attributes; leftovers are errors."""

    def __init__(self, attrs: Mapping[str, object], where: str) -> None:
        self._attrs = dict(attrs)
        self._where = where

    def ints(self, name: str, default: tuple[int, ...] | None, length: int | None) -> tuple[int, ...]:
        """A list of ``length`` integers (any length when None); ``default=None`` makes it required."""
        value = self._attrs.pop(name, None)
        if value is None:
            if default is None:
                raise ValueError(f"{self._where}: required attribute {name!r} is missing")
            return default
        if (
            not isinstance(value, list)
            or (length is not None and len(value) != length)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            count = "" if length is None else f"{length} "
            raise ValueError(f"{self._where}: attribute {name!r} must be a list of {count}integers, got {value!r}")
        return tuple(value)

    def integer(self, name: str, default: int, choices: Sequence[int] | None = None) -> int:
        value = self._attrs.pop(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or (choices is not None and value not in choices):
            valid = f"one of {list(choices)}" if choices is not None else "an integer"
            raise ValueError(f"{self._where}: attribute {name!r} must be {valid}, got {value!r}")
        return value

    def auto_pad(self) -> AutoPad:
        value = self._attrs.pop("auto_pad", "NOTSET")
        if value not in _AUTO_PADS:
            raise ValueError(f"{self._where}: auto_pad must be one of {list(_AUTO_PADS)}, got {value!r}")
        return cast(AutoPad, value)

    def has(self, name: str) -> bool:
        return name in self._attrs

    def done(self) -> None:
        if self._attrs:
            raise ValueError(f"{self._where}: unsupported attribute(s) {sorted(self._attrs)}")


@dataclass(frozen=True)
class _Window:
    """Kernel geometry and padding of a 2-D Conv or pool node."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    auto_pad: AutoPad
    pads: tuple[int, int, int, int]  # ONNX order: h_begin, w_begin, h_end, w_end (NOTSET only)

    @property
    def symmetric(self) -> tuple[int, int] | None:
        """Per-side padding when it is the same on both sides and known before run time."""
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            return None
        hb, wb, he, we = self.pads
        return (hb, wb) if (hb, wb) == (he, we) else None

    def pad(self, x: torch.Tensor, *, value: float) -> torch.Tensor:
        """``x`` padded explicitly, for when the op's own symmetric padding cannot express it."""
        pads = self.pads
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = self._same_pads(x.shape[-2:])
        hb, wb, he, we = pads
        return F.pad(x, (wb, we, hb, he), value=value) if any(pads) else x

    def _same_pads(self, size: Sequence[int]) -> tuple[int, int, int, int]:
        begin, end = [], []
        for n, k, s, d in zip(size, self.kernel, self.strides, self.dilations, strict=True):
            total = max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
            small, large = total // 2, total - total // 2
            # ONNX: SAME_UPPER puts the extra pixel at the end, SAME_LOWER at the beginning.
            b, e = (small, large) if self.auto_pad == "SAME_UPPER" else (large, small)
            begin.append(b)
            end.append(e)
        return (begin[0], begin[1], end[0], end[1])


def _window(attrs: _Attrs, where: str, *, kernel: tuple[int, ...] | None) -> _Window:
    k = attrs.ints("kernel_shape", kernel, 2)
    if kernel is not None and k != kernel:
        raise ValueError(f"{where}: kernel_shape {list(k)} does not match the weight's {list(kernel)}")
    strides = attrs.ints("strides", (1, 1), 2)
    dilations = attrs.ints("dilations", (1, 1), 2)
    auto_pad = attrs.auto_pad()
    if auto_pad != "NOTSET" and attrs.has("pads"):
        raise ValueError(f"{where}: pads cannot be combined with auto_pad={auto_pad}")
    pads = attrs.ints("pads", (0, 0, 0, 0), 4)
    if min(pads) < 0 or min(k) < 1 or min(strides) < 1 or min(dilations) < 1:
        raise ValueError(f"{where}: negative pads or non-positive kernel/strides/dilations")
    return _Window(
        kernel=(k[0], k[1]),
        strides=(strides[0], strides[1]),
        dilations=(dilations[0], dilations[1]),
        auto_pad=auto_pad,
        pads=(pads[0], pads[1], pads[2], pads[3]),
    )


def _pool_window(attrs: _Attrs, where: str) -> _Window:
    window = _window(attrs, where, kernel=None)
    hb, wb, he, we = window.pads
    if max(hb, he) >= window.kernel[0] or max(wb, we) >= window.kernel[1]:
        # A window lying entirely in padding has no defined value (onnxruntime refuses it too).
        raise ValueError(f"{where}: pads {list(window.pads)} must be smaller than kernel_shape {list(window.kernel)}")
    return window


def _fits_native(padding: tuple[int, int], kernel: tuple[int, int]) -> bool:
    # torch pooling accepts symmetric padding only up to half the kernel.
    return all(p <= k // 2 for p, k in zip(padding, kernel, strict=True))


def _arity(where: str, node: NodeSpec, low: int, high: int) -> None:
    n = len(node["inputs"])
    if not low <= n <= high:
        expected = str(low) if low == high else f"{low} to {high}"
        raise ValueError(f"{where}: expected {expected} inputs, got {n}")
    if any(name == "" for name in node["inputs"][:low]):
        raise ValueError(f"{where}: a required input is empty")


def _compile_conv(node: NodeSpec, attrs: _Attrs, tensors: Mapping[str, torch.Tensor], where: str) -> _Kernel:
    _arity(where, node, 2, 3)
    weight = tensors.get(node["inputs"][1])
    if weight is None or weight.dim() != 4:
        # The kernel shape must be known here to validate the node; 2-D convolutions only.
        raise ValueError(f"{where}: the weight must be a 4-D initializer (2-D convolution)")
    window = _window(attrs, where, kernel=tuple(weight.shape[2:]))
    groups = attrs.integer("group", 1)
    attrs.done()
    symmetric = window.symmetric

    def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if symmetric is not None:
            return F.conv2d(x, w, b, window.strides, symmetric, window.dilations, groups)
        return F.conv2d(window.pad(x, value=0.0), w, b, window.strides, 0, window.dilations, groups)

    return conv


def _compile_max_pool(node: NodeSpec, attrs: _Attrs, tensors: Mapping[str, torch.Tensor], where: str) -> _Kernel:
    _arity(where, node, 1, 1)
    if len(node["outputs"]) != 1:
        raise ValueError(f"{where}: the Indices output is not supported")
    window = _pool_window(attrs, where)
    # ceil_mode=1 differs between ONNX opsets and torch at the border; refused rather than approximated.
    attrs.integer("ceil_mode", 0, choices=(0,))
    attrs.integer("storage_order", 0, choices=(0,))
    attrs.done()
    symmetric = window.symmetric
    native = symmetric if symmetric is not None and _fits_native(symmetric, window.kernel) else None

    def max_pool(x: torch.Tensor) -> torch.Tensor:
        if native is not None:
            return F.max_pool2d(x, window.kernel, window.strides, native, window.dilations)
        # Padded cells must never win the max, as in ONNX.
        return F.max_pool2d(window.pad(x, value=-math.inf), window.kernel, window.strides, 0, window.dilations)

    return max_pool


def _compile_average_pool(node: NodeSpec, attrs: _Attrs, tensors: Mapping[str, torch.Tensor], where: str) -> _Kernel:
    _arity(where, node, 1, 1)
    window = _pool_window(attrs, where)
    attrs.integer("ceil_mode", 0, choices=(0,))
    include_pad = bool(attrs.integer("count_include_pad", 0, choices=(0, 1)))
    attrs.done()
    if window.dilations != (1, 1):
        raise ValueError(f"{where}: dilated AveragePool is not supported")
    symmetric = window.symmetric
    native = symmetric if symmetric is not None and _fits_native(symmetric, window.kernel) else None
    if native is None and not include_pad:
        # Explicit zero padding would be counted in the divisor; torch only excludes its own
        # (symmetric, at most half-kernel) padding.
        raise ValueError(
            f"{where}: count_include_pad=0 needs symmetric pads of at most half the kernel, "
            f"got auto_pad={window.auto_pad} pads={list(window.pads)}"
        )

    def average_pool(x: torch.Tensor) -> torch.Tensor:
        if native is not None:
            return F.avg_pool2d(x, window.kernel, window.strides, native, count_include_pad=include_pad)
        return F.avg_pool2d(window.pad(x, value=0.0), window.kernel, window.strides, 0)

    return average_pool


def _compile_reshape(node: NodeSpec, attrs: _Attrs, tensors: Mapping[str, torch.Tensor], where: str) -> _Kernel:
    _arity(where, node, 2, 2)
    shape_tensor = tensors.get(node["inputs"][1])
    if shape_tensor is None or shape_tensor.dtype != torch.int64 or shape_tensor.dim() != 1:
        raise ValueError(f"{where}: the shape must be a 1-D int64 initializer")
    allow_zero = bool(attrs.integer("allowzero", 0, choices=(0, 1)))
    attrs.done()
    # Read once here: a .tolist() per call would force a device sync on a GPU.
    target = tuple(int(v) for v in shape_tensor.tolist())
    if target.count(-1) > 1 or min(target, default=0) < -1:
        raise ValueError(f"{where}: invalid target shape {list(target)}")

    def reshape(x: torch.Tensor, _shape: torch.Tensor) -> torch.Tensor:
        # ONNX: 0 copies the input's dimension unless allowzero is set.
        shape = target if allow_zero else tuple(x.shape[i] if d == 0 else d for i, d in enumerate(target))
        return torch.reshape(x, shape)

    return reshape


def _compile_transpose(node: NodeSpec, attrs: _Attrs, tensors: Mapping[str, torch.Tensor], where: str) -> _Kernel:
    _arity(where, node, 1, 1)
    perm: tuple[int, ...] | None = attrs.ints("perm", (), None) or None  # absent: reverse the axes
    attrs.done()
    if perm is not None and sorted(perm) != list(range(len(perm))):
        raise ValueError(f"{where}: perm {list(perm)} is not a permutation")

    def transpose(x: torch.Tensor) -> torch.Tensor:
        return x.permute(perm if perm is not None else tuple(reversed(range(x.dim()))))

    return transpose


def _compile_softmax(node: NodeSpec, attrs: _Attrs, tensors: Mapping[str, torch.Tensor], where: str) -> _Kernel:
    _arity(where, node, 1, 1)
    axis = attrs.integer("axis", 1)
    attrs.done()

    def softmax(x: torch.Tensor) -> torch.Tensor:
        # Opset < 13: the input is coerced to 2-D, [prod(shape[:axis]), prod(shape[axis:])].
        a = axis % x.dim()
        rows = math.prod(x.shape[:a])
        return torch.softmax(x.reshape(rows, -1), dim=1).reshape(x.shape)

    return softmax


def _simple(fn: _Kernel, n_inputs: int) -> Callable[[NodeSpec, _Attrs, Mapping[str, torch.Tensor], str], _Kernel]:
    def compile_(node: NodeSpec, attrs: _Attrs, tensors: Mapping[str, torch.Tensor], where: str) -> _Kernel:
        _arity(where, node, n_inputs, n_inputs)
        attrs.done()  # e.g. the pre-opset-7 Add 'broadcast' attribute is refused here
        return fn

    return compile_


_COMPILERS: dict[str, Callable[[NodeSpec, _Attrs, Mapping[str, torch.Tensor], str], _Kernel]] = {
    "Conv": _compile_conv,
    "Relu": _simple(F.relu, 1),
    "Add": _simple(torch.add, 2),
    "MatMul": _simple(torch.matmul, 2),
    "Reshape": _compile_reshape,
    "Transpose": _compile_transpose,
    "MaxPool": _compile_max_pool,
    "AveragePool": _compile_average_pool,
    "Softmax": _compile_softmax,
}

#: ONNX op types ``GraphModule`` can run.
SUPPORTED_OPS = frozenset(_COMPILERS)


def _check_node(index: int, node: object) -> NodeSpec:
    if not isinstance(node, dict):
        raise ValueError(f"node {index}: expected an object, got {type(node).__name__}")
    missing = {"op", "inputs", "outputs", "attrs"} - node.keys()
    if missing:
        raise ValueError(f"node {index}: missing key(s) {sorted(missing)}")
    op, inputs, outputs, attrs = node["op"], node["inputs"], node["outputs"], node["attrs"]
    if not isinstance(op, str):
        raise ValueError(f"node {index}: op must be a string, got {op!r}")
    for key, names in (("inputs", inputs), ("outputs", outputs)):
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"node {index} ({op}): {key} must be a list of names, got {names!r}")
    if not isinstance(attrs, dict):
        raise ValueError(f"node {index} ({op}): attrs must be an object, got {attrs!r}")
    return cast(NodeSpec, node)


class GraphModule(torch.nn.Module):
    """An ONNX node list executed with torch functional ops.

    Every tensor is a buffer (``t0``, ``t1``, ... in name order; ``tensor_names`` maps them
    back to ONNX names), so ``.to(device)`` and ``.half()`` apply to the weights; the caller
    casts inputs to match. Each node is validated and bound to its op when the module is
    built; ``forward`` only runs them.
    """

    def __init__(
        self,
        *,
        nodes: Sequence[NodeSpec],
        tensors: Mapping[str, torch.Tensor],
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> None:
        """Validate the graph and bind every node to its torch op.

        Args:
            nodes: ONNX nodes in execution (topological) order.
            tensors: initializers by ONNX name.
            input_names: graph inputs, in the order ``forward`` takes them.
            output_names: graph outputs; ``forward`` returns the first.

        Raises:
            ValueError: a node uses an op outside ``SUPPORTED_OPS`` (named with its node), an
                unsupported attribute or value, or an input nothing defines; a name is
                defined twice; an output is never produced.
        """
        super().__init__()
        checked = [_check_node(i, n) for i, n in enumerate(nodes)]
        unsupported = [
            f"{n['op']!r} (node {i}, outputs {n['outputs']})"
            for i, n in enumerate(checked) if n["op"] not in SUPPORTED_OPS
        ]
        if unsupported:
            raise ValueError(f"unsupported ONNX op(s): {', '.join(unsupported)}; supported: {sorted(SUPPORTED_OPS)}")
        if not output_names:
            raise ValueError("the graph has no outputs")
        overlap = set(input_names) & set(tensors)
        if overlap or len(set(input_names)) != len(input_names):
            raise ValueError(f"graph inputs must be unique and not initializers: {list(input_names)}")

        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.tensor_names = tuple(sorted(tensors))
        for i, name in enumerate(self.tensor_names):
            # ONNX names contain '.', '/' and ':', which buffer names may not.
            self.register_buffer(f"t{i}", tensors[name].detach().clone())

        defined = set(self.input_names) | set(tensors)
        steps: list[tuple[tuple[str, ...], str, _Kernel]] = []
        for index, node in enumerate(checked):
            where = f"node {index} ({node['op']} -> {node['outputs'][:1]})"
            for name in node["inputs"]:
                if name and name not in defined:
                    raise ValueError(f"{where}: input {name!r} is not defined by any earlier node, input or "
                                     "initializer")
            if len(node["outputs"]) < 1 or node["outputs"][0] == "":
                raise ValueError(f"{where}: the node has no output")
            kernel = _COMPILERS[node["op"]](node, _Attrs(node["attrs"], where), tensors, where)
            if len(node["outputs"]) != 1:
                raise ValueError(f"{where}: expected 1 output, got {node['outputs']}")
            output = node["outputs"][0]
            if output in defined:
                raise ValueError(f"{where}: output {output!r} is already defined")
            defined.add(output)
            steps.append((tuple(node["inputs"]), output, kernel))
        for name in self.output_names:
            if name not in defined:
                raise ValueError(f"graph output {name!r} is not produced by any node")

        # Free each intermediate after its last use: peak memory then tracks the widest
        # layer, not the whole graph, which matters for large batches on a GPU.
        last_use: dict[str, int] = {}
        for index, (inputs, _, _) in enumerate(steps):
            for name in inputs:
                if name and name not in tensors:
                    last_use[name] = index
        keep = set(self.output_names)
        self._steps = tuple(
            _Step(
                inputs=inputs,
                output=output,
                kernel=kernel,
                release=tuple(n for n, last in last_use.items() if last == index and n not in keep),
            )
            for index, (inputs, output, kernel) in enumerate(steps)
        )

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Run the graph on tensors given in ``input_names`` order; returns the first output.

        Raises:
            ValueError: the number of inputs does not match ``input_names``.
        """
        if len(inputs) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} input(s) {list(self.input_names)}, got {len(inputs)}")
        values: dict[str, torch.Tensor] = {n: getattr(self, f"t{i}") for i, n in enumerate(self.tensor_names)}
        values.update(zip(self.input_names, inputs, strict=True))
        for step in self._steps:
            args = [values[name] if name else None for name in step.inputs]
            values[step.output] = step.kernel(*args)
            for name in step.release:
                del values[name]
        return values[self.output_names[0]]
