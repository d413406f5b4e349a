"""onnxruntime's integer kernels against qcert's layers, node by node: ``QLinearConv``,
``QLinearMatMul`` and ``QGemm`` (uint8 and int8, per-tensor and per-channel, biases that push the
accumulator past 2**24 so its conversion to float32 rounds, outputs that saturate, and every
accumulator of a range so that ties and the order of the scale computation show),
``QLinearGlobalAveragePool`` and ``QuantizeLinear``. Also the finding that u8 × s8 products with
weights beyond ±64 are not exact on CPUs without VNNI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qcert.export import session
from qcert.export.import_ort import pair_saturation_cpu
from qcert.quant import (
    FixedPointFormat,
    QConv2d,
    QFlatten,
    QGlobalSumPool,
    QLinear,
    QNetwork,
    QOffset,
    QRescale,
    ort_output_scale,
    quantize_linear,
)
from qcert.quant.multiplier import ort_global_pool_scale

F32 = np.float32
TYPES = {False: (np.uint8, TensorProto.UINT8), True: (np.int8, TensorProto.INT8)}


def run_node(node, x, inits, in_t, out_t, out_shape):  # noqa: ANN001, ANN201
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", in_t, [None, *x.shape[1:]])],
        [helper.make_tensor_value_info("y", out_t, [None, *out_shape])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    return session(m, threads=1).run(None, {"x": x})[0]


def qcert_affine(x, w, bias, zx, sx, sw, sy, zy, signed):  # noqa: ANN001, ANN201
    """offset → linear → rescale, on N×K codes; w is C×K."""
    fmt = FixedPointFormat(8, signed, 0)
    b32 = FixedPointFormat(32, True, 0)
    net = QNetwork(
        [
            QOffset(zx),
            QLinear.from_int(torch.from_numpy(w), None if bias is None else torch.from_numpy(bias),
                             FixedPointFormat(8, True, 0), None if bias is None else b32),
            QRescale(fmt, zy, scale=ort_output_scale(sx, list(sw), sy)),
        ],
        (w.shape[1],), fmt,
    )  # fmt: skip
    return net.integer_forward(torch.from_numpy(x.astype(np.int64))).numpy()


def make_op(op: str, w: np.ndarray, bias, s_x, z_x, s_w, s_y, z_y, xt, signed):  # noqa: ANN001, ANN201
    inits = {
        "sx": np.array(s_x, F32), "zx": np.array(z_x, xt), "sw": s_w.astype(F32),
        "zw": np.zeros(s_w.size, np.int8), "sy": np.array(s_y, F32), "zy": np.array(z_y, xt),
    }  # fmt: skip
    if op == "QLinearMatMul":
        inits["w"] = w.T.astype(np.int8)
        return helper.make_node(op, ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["y"]), inits
    inits["w"] = w.astype(np.int8) if op == "QGemm" else w.reshape(*w.shape, 1, 1).astype(np.int8)
    if bias is not None:
        inits["b"] = bias.astype(np.int32)
    b = "b" if bias is not None else ""
    if op == "QGemm":
        ins = ["x", "sx", "zx", "w", "sw", "zw", b, "sy", "zy"]
        return helper.make_node(op, ins, ["y"], domain="com.microsoft", transB=1), inits
    ins = ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"] + ([b] if b else [])
    return helper.make_node(op, ins, ["y"]), inits


OPS = ["QLinearMatMul", "QLinearConv", "QGemm"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("signed", [False, True])
def test_random_products_bit_exact(op: str, signed: bool) -> None:
    rng = np.random.default_rng(OPS.index(op) * 2 + signed)
    xt, tt = TYPES[signed]
    info = np.iinfo(xt)
    for trial in range(12):
        k, c, n = int(rng.integers(1, 40)), int(rng.integers(1, 6)), 300
        z_x, z_y = (int(rng.integers(info.min, info.max + 1)) for _ in range(2))
        w = rng.integers(-64, 65, (c, k))  # within ±64: no pair saturation on any CPU
        x = rng.integers(info.min, info.max + 1, (n, k))
        x[:5], x[5:10] = info.min, info.max
        s_x = F32(rng.uniform(1e-4, 1e-1))
        s_w = rng.uniform(1e-4, 1e-2, c if trial % 2 else 1).astype(F32)
        big = trial % 3 == 0  # accumulators past 2**24: fl32(acc) rounds
        bias = None
        if op != "QLinearMatMul":
            bias = rng.integers(-(2**27), 2**27, c) if big else rng.integers(-3000, 3000, c)
        acc = (x - z_x) @ w.T + (0 if bias is None else bias)
        spread = float(np.abs(acc * (np.float64(s_x) * s_w.astype(np.float64))).max()) + 1e-12
        s_y = F32(spread / rng.uniform(30, 400))  # some outputs saturate
        node, inits = make_op(op, w, bias, s_x, z_x, s_w, s_y, z_y, xt, signed)
        xin = x.astype(xt) if op != "QLinearConv" else x.reshape(n, k, 1, 1).astype(xt)
        got = run_node(node, xin, inits, tt, tt, [c] if op != "QLinearConv" else [c, 1, 1])
        want = qcert_affine(x, w, bias, z_x, s_x, np.broadcast_to(s_w, (c,)), s_y, z_y, signed)
        assert np.array_equal(got.reshape(n, c).astype(np.int64), want), (op, trial)


@pytest.mark.parametrize("op", OPS)
def test_every_accumulator_of_a_range(op: str) -> None:
    """Every accumulator 0..32385 (inputs over weights 1, 2, 4, ..., 64), with scales for which
    ``fl32(fl32(s_x·s_w)/s_y)`` differs from the other orders of operations: ties and the formula."""
    rng = np.random.default_rng(7)
    w = np.array([[1, 2, 4, 8, 16, 32, 64]])
    accs = np.arange(0, 255 * 127 + 1)
    x = np.zeros((accs.size, 7), np.int64)
    rest = accs.copy()
    for j in range(6, -1, -1):
        x[:, j] = np.minimum(255, rest // w[0, j])
        rest -= x[:, j] * w[0, j]
    assert not rest.any()
    found = 0
    for _ in range(3000):
        s_x, s_w = F32(rng.uniform(1e-3, 1e-1)), F32(rng.uniform(1e-3, 1e-1))
        s_y = F32(s_x * s_w * F32(rng.uniform(5, 300)))
        ours = ort_output_scale(s_x, [s_w], s_y)[0]
        other = float(F32(s_x * F32(s_w / s_y)))
        if ours == other:
            continue
        z_y = int(rng.integers(0, 256))
        want = qcert_affine(x, w, None, 0, s_x, [s_w], s_y, z_y, False).reshape(-1)
        alt = np.rint((accs.astype(F32) * F32(other)).clip(-z_y, 255 - z_y)) + z_y
        if np.array_equal(alt.astype(np.int64), want):
            continue  # the two orders differ here only where no accumulator lands
        found += 1
        node, inits = make_op(op, w, None, s_x, 0, np.array([s_w]), s_y, z_y, np.uint8, False)
        xin = x.astype(np.uint8) if op != "QLinearConv" else x.reshape(-1, 7, 1, 1).astype(np.uint8)
        got = run_node(node, xin, inits, TensorProto.UINT8, TensorProto.UINT8,
                       [1] if op != "QLinearConv" else [1, 1, 1]).reshape(-1)  # fmt: skip
        assert np.array_equal(got.astype(np.int64), want)  # and the other order would be wrong
        if found == 4:
            break
    assert found == 4


@pytest.mark.parametrize("signed", [False, True])
def test_global_average_pool_bit_exact(signed: bool) -> None:
    rng = np.random.default_rng(11 + signed)
    xt, tt = TYPES[signed]
    info = np.iinfo(xt)
    fmt = FixedPointFormat(8, signed, 0)
    for h, w in [(3, 5), (7, 7), (5, 5), (4, 4), (6, 2)]:
        s_x = F32(rng.uniform(1e-3, 0.1))
        s_y = F32(s_x * rng.uniform(0.05, 3))
        z_x, z_y = (int(rng.integers(info.min, info.max + 1)) for _ in range(2))
        x = rng.integers(info.min, info.max + 1, (400, 3, h, w))
        node = helper.make_node(
            "QLinearGlobalAveragePool", ["x", "sx", "zx", "sy", "zy"], ["y"],
            domain="com.microsoft", channels_last=0,
        )  # fmt: skip
        inits = {"sx": np.array(s_x, F32), "zx": np.array(z_x, xt), "sy": np.array(s_y, F32),
                 "zy": np.array(z_y, xt)}  # fmt: skip
        got = run_node(node, x.astype(xt), inits, tt, tt, [3, 1, 1]).reshape(400, 3)
        net = QNetwork(
            [QOffset(z_x), QGlobalSumPool(),
             QRescale(fmt, z_y, scale=[ort_global_pool_scale(s_x, s_y, h * w)]), QFlatten()],
            (3, h, w), fmt,
        )  # fmt: skip
        assert np.array_equal(
            got.astype(np.int64), net.integer_forward(torch.from_numpy(x)).numpy()
        )


def test_conv_padding_takes_the_zero_point() -> None:
    rng = np.random.default_rng(5)
    w = rng.integers(-64, 65, (2, 1, 3, 3))
    x = rng.integers(0, 256, (50, 1, 5, 5))
    s_x, s_w, s_y, z_x, z_y = F32(0.02), np.array([0.01, 0.003], F32), F32(0.05), 77, 9
    inits = {"sx": np.array(s_x, F32), "zx": np.array(z_x, np.uint8), "w": w.astype(np.int8),
             "sw": s_w, "zw": np.zeros(2, np.int8), "sy": np.array(s_y, F32),
             "zy": np.array(z_y, np.uint8)}  # fmt: skip
    node = helper.make_node(
        "QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["y"], pads=[1, 1, 1, 1]
    )
    got = run_node(node, x.astype(np.uint8), inits, TensorProto.UINT8, TensorProto.UINT8, [2, 5, 5])
    u8 = FixedPointFormat(8, False, 0)
    net = QNetwork(
        [QOffset(z_x), QConv2d.from_int(torch.from_numpy(w), None, FixedPointFormat(8, True, 0),
                                        None, 1, 1),
         QRescale(u8, z_y, scale=ort_output_scale(s_x, list(s_w), s_y)), QFlatten()],
        (1, 5, 5), u8,
    )  # fmt: skip
    assert np.array_equal(
        got.reshape(50, -1).astype(np.int64), net.integer_forward(torch.from_numpy(x)).numpy()
    )


def test_quantize_linear_matches_onnxruntime() -> None:
    rng = np.random.default_rng(3)
    for signed in (False, True):
        xt, tt = TYPES[signed]
        info = np.iinfo(xt)
        for _ in range(20):
            s = F32(rng.uniform(1e-3, 0.1))
            z = int(rng.integers(info.min, info.max + 1))
            x = np.concatenate([np.arange(256) / 255, rng.normal(0, 2, 3000),
                                (np.arange(-300, 300) + 0.5) * s]).astype(F32)  # fmt: skip
            node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
            g = helper.make_graph(
                [node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                [helper.make_tensor_value_info("y", tt, [None])],
                [numpy_helper.from_array(np.array(s, F32), "s"),
                 numpy_helper.from_array(np.array(z, xt), "z")],
            )  # fmt: skip
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
            got = session(m).run(None, {"x": x})[0].astype(np.int64)
            assert np.array_equal(got, quantize_linear(x, float(s), z, info.min, info.max))


@pytest.mark.skipif(pair_saturation_cpu() is not True, reason="needs AVX2 without VNNI")
def test_full_range_weights_saturate_pairs_on_this_cpu() -> None:
    """The finding the import warns about: u8 × s8 with |w1| + |w2| > 128 differs."""
    w = np.array([[127, 127, 127, 127]])
    x = np.full((1, 4), 255)
    node, inits = make_op("QLinearMatMul", w, None, F32(1.0), 0, np.array([1.0], F32),
                          F32(2.0**10), 0, np.uint8, False)  # fmt: skip
    got = int(
        run_node(node, x.astype(np.uint8), inits, TensorProto.UINT8, TensorProto.UINT8, [1])[0, 0]
    )
    exact = int(qcert_affine(x, w, None, 0, 1.0, [1.0], 2.0**10, 0, False)[0, 0])
    assert exact == 127  # 4·255·127 / 1024 = 126.50...: 127
    assert got == 64  # each pair saturates at 32767: 2·32767 / 1024 = 63.99...: 64
