"""Reading an integer-only ONNX graph: its formats come from the ``qcert`` metadata, its weights
from the graph, and the graph must equal qcert's export of the network read, node for node."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import helper

from qcert.errors import FormatError, GraphMismatch, ModelFileError, QcertError
from qcert.export.builder import GraphBuilder, GraphIndex, match_graph
from qcert.export.exporter import onnx_model, weights_sha256
from qcert.export.integer import INT64_PATH, AffinePath, Val, emit_layer, input_elem_type
from qcert.export.onnx_io import graph_io, input_shape
from qcert.quant import QConv2d, QLinear, QNetwork
from qcert.quant.io import network_from

__all__ = ["check_same_graph", "import_integer"]


def _placeholder_tensors(header: dict[str, Any], name: str) -> dict[str, np.ndarray]:
    """Zero tensors of the right shapes, to build the network's layers before reading weights."""
    layers = header.get("layers")
    if not isinstance(layers, list):
        raise ModelFileError(f"{name}: the qcert metadata has no layer list")
    out: dict[str, np.ndarray] = {}
    for i, d in enumerate(layers):
        if not isinstance(d, dict) or d.get("type") not in ("linear", "conv2d"):
            continue
        try:
            shape: tuple[int, ...]
            if d["type"] == "linear":
                shape = (int(d["out_features"]), int(d["in_features"]))
            else:
                shape = (int(d["out_channels"]), int(d["in_channels"]), *map(int, d["kernel_size"]))
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{name}: layer {i} of the qcert metadata is malformed") from None
        if min(shape) < 1 or math.prod(shape) > 1 << 28:
            raise ModelFileError(f"{name}: layer {i} has an invalid weight shape {shape}")
        out[f"layers.{i}.weight"] = np.zeros(shape, np.int64)
        if d.get("bias_format") is not None:
            out[f"layers.{i}.bias"] = np.zeros(shape[:1], np.int64)
    return out


def _weights_from_storage(
    layer: QLinear | QConv2d, path: AffinePath, w: np.ndarray, b: np.ndarray | None, where: str
) -> tuple[np.ndarray, np.ndarray | None]:
    w = w.astype(np.int64) - (path.w_offset if path.kind == "int8" else 0)
    if isinstance(layer, QLinear):
        w = w.T
    if b is None:
        return np.ascontiguousarray(w), None
    assert layer.bias_format is not None
    shift = layer.acc_frac - layer.bias_format.frac
    b_acc = b.astype(np.int64).reshape(-1)
    codes = b_acc >> shift
    if not np.array_equal(codes << shift, b_acc):
        raise ModelFileError(
            f"{where}: the bias is not a multiple of 2**{shift}, so it has more fractional bits "
            f"than its format {layer.bias_format} in the metadata"
        )
    return np.ascontiguousarray(w), codes


def import_integer(model: onnx.ModelProto, meta: dict[str, Any], name: str) -> QNetwork:
    header = meta["model"]
    placeholder = network_from(header, _placeholder_tensors(header, name), name)
    g = model.graph
    inp, out = graph_io(g, name)
    dtype, shape = input_shape(inp, name)
    if dtype != input_elem_type(placeholder) or shape != placeholder.input_shape:
        want = helper.tensor_dtype_to_np_dtype(input_elem_type(placeholder))
        raise ModelFileError(
            f"{name}: the graph input is {helper.tensor_dtype_to_np_dtype(dtype)} N×{shape}; its "
            f"qcert metadata describes {want} N×{placeholder.input_shape}"
        )
    actual = GraphIndex.of_graph(g)
    cur = Val(inp.name, dtype, shape)
    used: set[int] = set()
    tensors: dict[str, np.ndarray] = {}
    for i, layer in enumerate(placeholder.layers):
        tag, where = f"l{i}_{layer.kind}", f"{name}: layer {i} ({layer.kind})"
        affine = isinstance(layer, QLinear | QConv2d)
        paths: list[AffinePath | None] = (
            [INT64_PATH, *(AffinePath("int8", xo, wo) for xo in (0, 128) for wo in (0, 128))]
            if affine
            else [None]
        )
        err: QcertError | None = None
        for path in paths:
            sb = GraphBuilder()
            sb.reserve(cur.name)
            try:
                v, roles = emit_layer(sb, layer, cur, path, tag)
            except FormatError as e:
                raise ModelFileError(f"{where}: {e}") from None
            wild = [r for r in roles.values() if r]
            try:
                m = match_graph(
                    GraphIndex.of(sb.nodes, sb.inits.values()),
                    actual,
                    {cur.name: cur.name},
                    wild,
                    used,
                )
            except GraphMismatch as e:
                err = e
                continue
            break
        else:
            raise ModelFileError(
                f"{where}: the graph does not compute it as qcert exports it: {err}"
            )
        used |= m.used
        if affine:
            assert path is not None and isinstance(layer, QLinear | QConv2d)
            w_name, b_name = roles["weight"], roles.get("bias")
            assert w_name is not None
            w, b = _weights_from_storage(
                layer, path, m.wildcards[w_name], m.wildcards[b_name] if b_name else None, where
            )
            tensors[f"layers.{i}.weight"] = w
            if b is not None:
                tensors[f"layers.{i}.bias"] = b
        cur = Val(m.names[v.name], v.dtype, v.shape)
    net = network_from(header, tensors, name)
    digest = meta.get("weights_sha256")
    if digest is not None and digest != weights_sha256(net):
        raise ModelFileError(
            f"{name}: the graph's weights or biases differ from those qcert exported (the "
            "metadata's weights_sha256 does not match): the graph was edited after export"
        )
    int8 = any(n.op_type in ("MatMulInteger", "ConvInteger") for n in actual.nodes)
    check_same_graph(onnx_model(net, "integer", int8_kernels=int8).graph, g, name)
    return net


def check_same_graph(expected: onnx.GraphProto, actual: onnx.GraphProto, name: str) -> None:
    """Raise :class:`ModelFileError` unless ``actual`` computes its output exactly as ``expected``
    does: every node matched (operator, attributes, constants, wiring) and no other node."""
    e_in, e_out = graph_io(expected, name)
    a_in, a_out = graph_io(actual, name)
    if (
        input_shape(e_in, name) != input_shape(a_in, name)
        or e_out.type.tensor_type.elem_type != a_out.type.tensor_type.elem_type
    ):
        raise ModelFileError(
            f"{name}: the graph's input or output type differs from qcert's export"
        )
    ai = GraphIndex.of_graph(actual)
    try:
        m = match_graph(GraphIndex.of_graph(expected), ai, {e_in.name: a_in.name})
    except GraphMismatch as e:
        raise ModelFileError(
            f"{name}: the graph differs from qcert's export of its network: {e}"
        ) from None
    if m.names.get(e_out.name) != a_out.name:
        raise ModelFileError(f"{name}: the graph's output is not the logits qcert computes")
    extra = [n for k, n in enumerate(ai.nodes) if k not in m.used]
    if extra:
        raise ModelFileError(
            f"{name}: the graph has {len(extra)} node(s) qcert's export does not have "
            f"(first: {extra[0].op_type} '{extra[0].name}')"
        )
