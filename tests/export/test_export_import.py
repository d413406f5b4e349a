"""``from_onnx``: export → import round trips, QDQ graphs written by hand, and every refusal."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_export_integer import networks
from test_export_qdq import qdq_networks

from qcert.errors import FormatError, ModelFileError
from qcert.export import (
    InexactExportWarning,
    compare_onnx,
    from_onnx,
    onnx_model,
    random_inputs,
    to_onnx,
)
from qcert.quant import FixedPointFormat, QConv2d, QFlatten, QLinear, QNetwork, QRequant
from qcert.quant.io import header_of


def assert_same_network(a: QNetwork, b: QNetwork) -> None:
    assert header_of(a) == header_of(b)
    for la, lb in zip(a.affine_layers(), b.affine_layers()):
        assert torch.equal(la.int_weight(), lb.int_weight())
        ba, bb = la.int_bias(), lb.int_bias()
        assert (ba is None and bb is None) or torch.equal(ba, bb)
    x = random_inputs(a, 16, seed=5)
    assert torch.equal(a.integer_forward(x), b.integer_forward(x))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(net=networks(), int8=st.booleans())
def test_integer_round_trip(tmp_path_factory, net, int8) -> None:
    path = tmp_path_factory.mktemp("rt") / "m.onnx"
    to_onnx(net, path, "integer", int8_kernels=int8)
    assert_same_network(net, from_onnx(path))


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(net=qdq_networks())
def test_qdq_round_trip(tmp_path_factory, net) -> None:
    path = tmp_path_factory.mktemp("rt") / "m.onnx"
    to_onnx(net, path, "qdq")
    assert_same_network(net, from_onnx(path))


def test_qdq_import_needs_no_metadata(tmp_path) -> None:
    net = QNetwork(
        [
            QConv2d.from_int(
                torch.tensor([[[[1.0, -2.0], [3.0, 4.0]]]]),
                torch.tensor([5.0]),
                FixedPointFormat(8, True, 3),
                FixedPointFormat(12, True, 2),
                1,
                1,
            ),
            QRequant(FixedPointFormat(8, False, 4), "half_even"),
            QFlatten(),
            QLinear.from_int(torch.ones(2, 16), None, FixedPointFormat(8, True, 0), None),
        ],
        (1, 3, 3),
        classes=["cat", "dog"],
    )
    model = onnx_model(net, "qdq")
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, path)
    back = from_onnx(path)
    # the graph holds the bias at the accumulator's scale and the weight as int8: the integer
    # function is the same, the formats are what the graph shows
    assert back.layers[0].bias_format == FixedPointFormat(32, True, 11)
    assert back.classes == ["0", "1"]
    x = random_inputs(net, 64)
    assert torch.equal(back.integer_forward(x), net.integer_forward(x))


# ------------------------------------------------------------------ hand-written QDQ graphs
def _c(name: str, value, dtype=None) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def third_party_qdq(relu_signed: bool = True) -> onnx.ModelProto:
    """A QDQ graph in the style other tools write: float input quantized in the graph, Conv with
    its bias input, Relu before an int8 QuantizeLinear, Reshape, MatMul + Add, float output."""
    g = np.random.default_rng(0)
    w1 = g.integers(-128, 128, (3, 1, 3, 3)).astype(np.int8)
    b1 = g.integers(-500, 500, (3,)).astype(np.int32)
    w2 = g.integers(-128, 128, (3 * 2 * 2, 4)).astype(np.int8)  # (in, out) for MatMul
    b2 = g.integers(-(2**12), 2**12, (4,)).astype(np.int32)
    inits = [
        _c("s_in", 2.0**-8, np.float32),
        _c("z_u8", 0, np.uint8),
        _c("w1", w1),
        _c("s_w1", 2.0**-7, np.float32),
        _c("z_i8", 0, np.int8),
        _c("b1", b1),
        _c("s_b1", 2.0**-15, np.float32),
        _c("z_i32", 0, np.int32),
        _c("s_a1", 2.0**-5, np.float32),
        _c("shape", [0, -1], np.int64),
        _c("w2", w2),
        _c("s_w2", 2.0**-6, np.float32),
        _c("b2", b2),
        _c("s_b2", 2.0**-11, np.float32),
    ]
    n = helper.make_node
    nodes = [
        n("QuantizeLinear", ["x", "s_in", "z_u8"], ["xq"]),
        n("DequantizeLinear", ["xq", "s_in", "z_u8"], ["xf"]),
        n("DequantizeLinear", ["w1", "s_w1", "z_i8"], ["w1f"]),
        n("DequantizeLinear", ["b1", "s_b1", "z_i32"], ["b1f"]),
        n("Conv", ["xf", "w1f", "b1f"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        n("Relu", ["c1"], ["r1"]),
        n("QuantizeLinear", ["r1", "s_a1", "z_i8" if relu_signed else "z_u8"], ["a1"]),
        n("DequantizeLinear", ["a1", "s_a1", "z_i8" if relu_signed else "z_u8"], ["a1f"]),
        n("Reshape", ["a1f", "shape"], ["flat"]),
        n("DequantizeLinear", ["w2", "s_w2", "z_i8"], ["w2f"]),
        n("MatMul", ["flat", "w2f"], ["mm"]),
        n("DequantizeLinear", ["b2", "s_b2", "z_i32"], ["b2f"]),
        n("Add", ["mm", "b2f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "third_party",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("relu_signed", [True, False])
def test_third_party_qdq_graph(tmp_path, relu_signed: bool) -> None:
    path = tmp_path / "tp.onnx"
    onnx.save(third_party_qdq(relu_signed), path)
    net = from_onnx(path)
    kinds = [m.kind for m in net.layers]
    assert kinds == ["conv2d", "requant", "flatten", "linear"]
    rq = net.layers[1]
    assert isinstance(rq, QRequant)
    # Relu then int8 saturation is [0, 127]: an unsigned 7-bit format
    bits = 7 if relu_signed else 8
    assert rq.format == FixedPointFormat(bits, False, 5) and rq.rounding.value == "half_even"
    assert net.input_format == FixedPointFormat(8, False, 8)
    x = random_inputs(net, 200, seed=1)
    for level in ("none", "basic"):  # the float input and output are handled by compare_onnx
        r = compare_onnx(net, path, x, optimization=level)
        assert r["equal_logits"] == r["n"] == 200


def _save(model: onnx.ModelProto, tmp_path, name: str = "m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _set_const(model: onnx.ModelProto, name: str, value) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            arr = np.array(value, dtype=numpy_helper.to_array(t).dtype)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))
            return
    raise KeyError(name)


def _per_channel_weight_scale(m: onnx.ModelProto) -> None:
    _set_const(m, "s_w1", np.full((3,), 2.0**-7, np.float32))
    for node in m.graph.node:
        if node.input and node.input[0] == "w1":
            node.attribute.append(helper.make_attribute("axis", 0))


def _sigmoid_for_relu(m: onnx.ModelProto) -> None:
    for node in m.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Sigmoid"


def _maxpool_for_reshape(m: onnx.ModelProto) -> None:
    for node in m.graph.node:
        if node.op_type == "Reshape":
            node.op_type = "MaxPool"
            del node.input[1:]
            node.attribute.extend([helper.make_attribute("kernel_shape", [1, 1])])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        # a scale that is not a power of two or a nonzero zero point makes the graph an
        # onnxruntime model (docs/export.md), whose reader refuses this graph's Relu → int8
        # QuantizeLinear (zero point above the minimum: onnxruntime cannot fuse it)
        (lambda m: _set_const(m, "s_w1", 0.3), "Relu is exact here only"),
        (lambda m: _set_const(m, "z_i8", 3), "Relu is exact here only"),
        (_per_channel_weight_scale, "per-channel"),
        (_sigmoid_for_relu, "operator Sigmoid is not supported"),
        (_maxpool_for_reshape, "MaxPool"),
    ],
    ids=["scale", "zero-point", "per-channel", "sigmoid", "maxpool"],
)
def test_qdq_refusals(tmp_path, change, match: str) -> None:
    m = onnx.ModelProto()
    m.CopyFrom(third_party_qdq())
    change(m)
    with pytest.raises(ModelFileError, match=match):
        from_onnx(_save(m, tmp_path))


def test_qdq_import_of_an_inexact_graph(tmp_path) -> None:
    u16, i16 = FixedPointFormat(16, False, 0), FixedPointFormat(16, True, 0)
    net = QNetwork([QLinear.from_int(torch.tensor([[32767.0], [1.0]]), None, i16, None)], (1,), u16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InexactExportWarning)
        path = tmp_path / "m.onnx"
        to_onnx(net, path, "qdq", strict=False)
    with pytest.raises(FormatError, match="2\\*\\*24"):
        from_onnx(path)
    with pytest.warns(InexactExportWarning):
        back = from_onnx(path, strict=False)
    assert torch.equal(
        back.integer_forward(torch.tensor([[65535]])), torch.tensor([[2147385345, 65535]])
    )


# ------------------------------------------------------------------ integer graphs
def _cnn() -> QNetwork:
    g = torch.Generator().manual_seed(1)
    i8, u8 = FixedPointFormat(8, True, 6), FixedPointFormat(8, False, 8)
    return QNetwork(
        [
            QConv2d.from_int(
                torch.randint(-128, 128, (3, 1, 3, 3), generator=g).double(),
                torch.randint(-999, 999, (3,), generator=g).double(),
                i8,
                FixedPointFormat(16, True, 12),
                2,
                1,
            ),
            QRequant(FixedPointFormat(8, False, 5), "half_up"),
            QFlatten(),
            QLinear.from_int(
                torch.randint(-2000, 2000, (4, 27), generator=g).double(),
                None,
                FixedPointFormat(12, True, 4),
                None,
            ),
        ],
        (1, 5, 5),
        u8,
        classes=["a", "b", "c", "d"],
        meta={"note": "test"},
    )


def test_integer_import_refuses_an_edited_weight(tmp_path) -> None:
    """Issue 12 item 13: a weight changed in an exported integer graph is refused (the metadata
    records the weights' digest); without that record (metadata written by hand) the import reads
    the graph's weights, not the metadata's."""
    net = _cnn()
    model = onnx_model(net)
    w_name = next(t.name for t in model.graph.initializer if t.name.startswith("l3_linear_weight"))
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == w_name)).copy()
    w[0, 0] = 7 if w[0, 0] != 7 else 8
    _set_const(model, w_name, w)
    with pytest.raises(ModelFileError, match="edited after export"):
        from_onnx(_save(model, tmp_path))
    meta = json.loads(model.metadata_props[0].value)
    del meta["weights_sha256"]
    model.metadata_props[0].value = json.dumps(meta)
    path = _save(model, tmp_path)
    back = from_onnx(path)
    assert int(back.layers[3].int_weight()[0, 0]) == int(w[0, 0])
    r = compare_onnx(back, path, random_inputs(back, 64))
    assert r["equal_logits"] == 64


def test_integer_import_refusals(tmp_path) -> None:
    net = _cnn()
    base = onnx_model(net)
    m = onnx.ModelProto()

    m.CopyFrom(base)
    del m.metadata_props[:]
    with pytest.raises(ModelFileError, match="metadata"):
        from_onnx(_save(m, tmp_path))

    m.CopyFrom(base)  # a requantization constant changed: the graph no longer rounds half up
    half = next(t.name for t in m.graph.initializer if t.name.endswith("_half"))
    _set_const(m, half, 3)
    with pytest.raises(ModelFileError, match="layer 1 \\(requant\\)"):
        from_onnx(_save(m, tmp_path))

    m.CopyFrom(base)  # the metadata says floor, the graph rounds half up
    meta = json.loads(m.metadata_props[0].value)
    meta["model"]["layers"][1]["rounding"] = "floor"
    m.metadata_props[0].value = json.dumps(meta)
    with pytest.raises(ModelFileError, match="layer 1"):
        from_onnx(_save(m, tmp_path))

    m.CopyFrom(base)  # an extra node on the side
    m.graph.node.append(helper.make_node("Identity", ["input"], ["side"]))
    with pytest.raises(ModelFileError, match="node"):
        from_onnx(_save(m, tmp_path))

    m.CopyFrom(base)  # metadata of another version
    meta = json.loads(m.metadata_props[0].value)
    meta["version"] = 99
    m.metadata_props[0].value = json.dumps(meta)
    with pytest.raises(ModelFileError, match="version"):
        from_onnx(_save(m, tmp_path))


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="no such"):
        from_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelFileError):
        from_onnx(bad)
    model = onnx_model(_cnn())
    data = model.SerializeToString()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        from_onnx(bad)


def test_integer_import_keeps_names_range_and_meta(tmp_path) -> None:
    net = _cnn()
    net2 = QNetwork(
        list(net.layers), net.input_shape, net.input_format, (3, 200), net.classes, net.meta
    )
    path = tmp_path / "m.onnx"
    to_onnx(net2, path)
    back = from_onnx(path)
    assert back.input_range == (3, 200) and back.classes == ["a", "b", "c", "d"]
    assert back.meta == {"note": "test"}
    assert_same_network(net2, back)
