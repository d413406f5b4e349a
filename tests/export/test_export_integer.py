"""The integer-only ONNX graph: onnxruntime's logits equal ``integer_forward`` bit for bit.

Random networks (conv with stride and padding, average pooling, linear, 2- to 16-bit signed and
unsigned formats, every rounding rule, requantized logits or raw accumulators, affine layers fed
with wide accumulators) on random inputs including the corners of the input range, with and
without the 8-bit kernels, at onnxruntime's default and disabled graph optimization.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from qnets import (
    ROUNDING_RULES,
    NetSpace,
    formats,
    rand_codes,
    random_networks,
    requant_rule,
    wide_bias,
)

from qcert.errors import FormatError
from qcert.export import onnx_logits, onnx_model, random_inputs, session, to_onnx
from qcert.export.integer import INT8_MAX_FAN_IN, plan_integer
from qcert.quant import FixedPointFormat, QAvgPool2d, QConv2d, QFlatten, QLinear, QNetwork, QRequant

AVOIDED_OPS = {"Clip", "Min", "Max", "ReduceSum"}
BITS = st.sampled_from([2, 3, 4, 7, 8, 8, 8, 9, 12, 16])
#: conv with stride and padding, pooling with and without stride, wide formats, accumulators fed
#: on unrequantized (mostly requantized: 4 in 5), ties and saturation
SPACE = NetSpace(
    extremes=(0.0, 0.3, 0.8),
    input_format=formats(BITS, st.booleans(), st.integers(-2, 10)),
    weight_format=formats(BITS, st.booleans(), st.integers(-2, 10)),
    bias_format=wide_bias(st.sampled_from([8, 16, 24, 32]), headroom=60),
    requant=requant_rule(BITS, st.one_of(st.integers(-2, 3), st.integers(4, 24))),
    channels=st.integers(1, 3),
    side=st.integers(2, 7),
    padding=st.integers(0, 2),
    stride=st.integers(1, 3),
    out_channels=st.integers(1, 4),
    pool_stride=st.sampled_from([None, (1, 1)]),
    conv_requant=st.integers(0, 4).map(bool),
    features=st.integers(1, 8),
    hidden_requant=st.integers(0, 4).map(bool),
)


def networks() -> st.SearchStrategy[QNetwork]:
    """Networks qcert accepts (values that could overflow int64 are not)."""
    return random_networks(SPACE).map(lambda spec: spec.network(skip_overflow=True))


def check_equal(net: QNetwork, model: onnx.ModelProto, x: torch.Tensor, level: str = "all"):
    got = onnx_logits(session(model, level), x)
    assert got.dtype == torch.int64
    assert torch.equal(got, net.integer_forward(x))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), int8=st.booleans(), level=st.sampled_from(["all", "all", "none"]))
def test_integer_graph_matches_reference_bit_for_bit(net, int8, level) -> None:
    model = onnx_model(net, "integer", int8_kernels=int8)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & AVOIDED_OPS
    if not int8:
        assert not ops & {"MatMulInteger", "ConvInteger"}
    check_equal(net, model, random_inputs(net, 24, seed=net.num_classes), level)


def test_random_networks_exercise_both_paths() -> None:
    """The strategy above reaches the 8-bit kernels, the int64 path and every rounding rule."""
    seen: set[str] = set()

    @settings(max_examples=100, deadline=None, database=None)
    @given(net=networks())
    def collect(net) -> None:
        for p in plan_integer(net):
            if p is not None:
                seen.add(p.kind)
        seen.update(m.rounding.value for m in net.layers if isinstance(m, QRequant))

    collect()
    assert {"int8", "int64", "half_up", "half_even", "floor"} <= seen


def test_8bit_kernels_with_signed_activations_and_unsigned_weights() -> None:
    g = torch.Generator().manual_seed(0)
    i8, u8 = FixedPointFormat(8, True, 6), FixedPointFormat(8, False, 8)
    u4 = FixedPointFormat(4, False, 3)
    conv = QConv2d.from_int(rand_codes(g, (4, 2, 3, 3), i8, 0.5), None, i8, None, 2, 1)
    rq = QRequant(FixedPointFormat(8, True, 4), "half_even")  # signed int8: stored offset by 128
    lin = QLinear.from_int(rand_codes(g, (3, 4 * 3 * 3), u4, 0.5), None, u4, None)
    net = QNetwork([conv, rq, QFlatten(), lin], (2, 5, 5), u8)
    paths = [p for p in plan_integer(net) if p is not None]
    assert [(p.kind, p.x_offset, p.w_offset) for p in paths] == [
        ("int8", 0, 128),
        ("int8", 128, 0),
    ]
    model = onnx_model(net)
    assert {"ConvInteger", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    x = random_inputs(net, 64, seed=3)
    for level in ("all", "none"):
        check_equal(net, model, x, level)


@pytest.mark.parametrize("fan_in", [INT8_MAX_FAN_IN, INT8_MAX_FAN_IN + 1])
def test_8bit_path_up_to_its_fan_in_limit(fan_in: int) -> None:
    i8, u8 = FixedPointFormat(8, True, 0), FixedPointFormat(8, False, 0)
    w = torch.full((2, fan_in), -128.0)
    w[1] = 127.0
    net = QNetwork([QLinear.from_int(w, None, i8, None)], (fan_in,), u8)
    kinds = [p.kind for p in plan_integer(net) if p is not None]
    assert kinds == (["int8"] if fan_in <= INT8_MAX_FAN_IN else ["int64"])
    x = torch.full((3, fan_in), 255)
    x[1] = 0
    x[2, ::2] = 0
    check_equal(net, onnx_model(net), x)
    assert int(net.integer_forward(x)[0, 0]) == -128 * 255 * fan_in  # the int32 extreme


def _shift_net(in_frac: int, w_frac: int, out_frac: int, rounding: str) -> QNetwork:
    u2 = FixedPointFormat(2, False, in_frac)
    wf = FixedPointFormat(3, True, w_frac)
    lin = QLinear.from_int(torch.tensor([[3.0, -4.0], [-4.0, 3.0]]), None, wf, None)
    return QNetwork([lin, QRequant(FixedPointFormat(16, True, out_frac), rounding)], (2,), u2)


@pytest.mark.parametrize("rounding", ["half_up", "half_even", "floor"])
def test_largest_shifts_are_exact_and_larger_ones_refused(rounding: str) -> None:
    x = torch.tensor([[0, 0], [3, 0], [0, 3], [3, 3], [1, 2]])
    for net in (_shift_net(31, 31, 0, rounding), _shift_net(-14, 0, 32, rounding)):  # 62 / -46
        check_equal(net, onnx_model(net), x)
    for net in (_shift_net(32, 31, 0, rounding), _shift_net(-15, 0, 32, rounding)):  # 63 / -47
        with pytest.raises(FormatError, match="shifts"):
            onnx_model(net)


def test_ties_round_by_each_rule() -> None:
    """Requantizing k/2 and k/4 with every rule (ties are where the rules differ)."""
    for rounding in ROUNDING_RULES:
        u8 = FixedPointFormat(8, False, 0)
        lin = QLinear.from_int(
            torch.tensor([[1.0], [-1.0], [3.0]]), None, FixedPointFormat(3, True, 2), None
        )
        net = QNetwork([lin, QRequant(FixedPointFormat(8, True, 0), rounding)], (1,), u8)
        x = torch.arange(256).view(-1, 1)
        check_equal(net, onnx_model(net), x)
        check_equal(net, onnx_model(net, int8_kernels=False), x)


def test_model_interface_and_file(tmp_path) -> None:
    u8, s16 = FixedPointFormat(8, False, 8), FixedPointFormat(16, True, 4)
    i8 = FixedPointFormat(8, True, 7)
    lin = QLinear.from_int(torch.ones(3, 4), torch.tensor([1.0, 2.0, 3.0]), i8, i8)
    for in_fmt, dtype in ((u8, TensorProto.UINT8), (s16, TensorProto.INT64)):
        net = QNetwork([lin], (4,), in_fmt, classes=["a", "b", "c"])
        path = tmp_path / "m.onnx"
        model = to_onnx(net, path)
        loaded = onnx.load(path)
        onnx.checker.check_model(loaded, full_check=True)
        assert loaded.graph.input[0].type.tensor_type.elem_type == dtype
        assert loaded.graph.output[0].type.tensor_type.elem_type == TensorProto.INT64
        assert any(p.key == "qcert" for p in loaded.metadata_props)
        sess = session(model)
        for n in (1, 7):  # the batch dimension is dynamic
            x = random_inputs(net, n, seed=n)
            out = onnx_logits(sess, x)
            assert out.shape == (n, 3)
            assert torch.equal(out, net.integer_forward(x))


def test_unknown_flavour_is_refused() -> None:
    net = QNetwork(
        [QLinear.from_int(torch.ones(2, 1), None, FixedPointFormat(2, True, 0), None)], (1,)
    )
    with pytest.raises(FormatError, match="flavour"):
        onnx_model(net, "float")


def test_only_integer_tensors_in_the_graph() -> None:
    net = QNetwork(
        [
            QConv2d.from_int(torch.ones(2, 1, 2, 2), None, FixedPointFormat(4, True, 2), None),
            QAvgPool2d(2),
            QRequant(FixedPointFormat(4, False, 6), "floor"),
            QFlatten(),
            QLinear.from_int(torch.ones(3, 2), None, FixedPointFormat(4, True, 2), None),
        ],
        (1, 3, 3),
    )
    model = onnx.shape_inference.infer_shapes(onnx_model(net), strict_mode=True)
    floats = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        assert vi.type.tensor_type.elem_type not in floats, vi.name
    for t in model.graph.initializer:
        assert t.data_type not in floats, t.name
    check_equal(net, model, random_inputs(net, 32))


def test_left_shift_saturates_without_int64_overflow() -> None:
    """acc * 2**40 leaves int64; the graph saturates it as the semantics say (checked with Python
    integers, since ``requantize`` multiplies in int64 before saturating)."""
    lin = QLinear.from_int(torch.tensor([[256.0]]), None, FixedPointFormat(16, True, -10), None)
    rq = QRequant(FixedPointFormat(8, True, 20), "half_up")
    net = QNetwork([lin, rq], (1,), FixedPointFormat(16, False, -10))
    x = torch.tensor([[32768], [65535], [1], [0]])
    got = onnx_logits(session(onnx_model(net)), x)
    k = rq.format.frac - lin.acc_frac
    assert k == 40
    exact = [[max(-128, min(127, int(a) * 256 * 2**k))] for a in x.flatten().tolist()]
    assert got.tolist() == exact
