"""The QDQ flavour is bit-exact exactly when ``qdq_problems`` says so, in both directions.

* no problems ⇒ onnxruntime's logits equal ``integer_forward`` on random networks and inputs (as
  written: optimization "none"/"basic"; and at "all", where onnxruntime fuses into integer kernels,
  when the fused-kernel condition holds too);
* each reported problem is real: a concrete input on which onnxruntime differs.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from qnets import NetSpace, formats, random_networks, requant_rule

from qcert.errors import FormatError
from qcert.export import (
    InexactExportWarning,
    onnx_logits,
    onnx_model,
    qdq_problems,
    random_inputs,
    session,
)
from qcert.quant import FixedPointFormat, QAvgPool2d, QConv2d, QFlatten, QLinear, QNetwork, QRequant


def qdq_bias(draw, acc_frac: int) -> FixedPointFormat:
    return FixedPointFormat(
        12, True, draw(st.integers(max(-32, acc_frac - 6), max(-32, min(32, acc_frac))))
    )


#: meant to be QDQ-exact: half-even 8/16-bit requantization, small sums
SPACE = NetSpace(
    extremes=(0.0, 0.5, 1.0),
    input_format=st.sampled_from(
        [
            FixedPointFormat(8, False, 8),
            FixedPointFormat(4, False, 2),
            FixedPointFormat(8, True, 4),
            FixedPointFormat(12, True, 0),
        ]
    ),
    weight_format=formats(st.sampled_from([2, 4, 7, 8, 12]), st.booleans(), st.integers(-2, 8)),
    bias_format=qdq_bias,
    requant=requant_rule(st.sampled_from([8, 8, 16]), st.integers(-2, 12), st.just("half_even")),
    side=st.integers(2, 6),
    convs=st.integers(1, 2),
    linears=st.integers(1, 2),
    hidden=st.integers(2, 5),
)


@st.composite
def qdq_networks(draw) -> QNetwork:
    net = draw(random_networks(SPACE)).network()
    assume(not qdq_problems(net))
    return net


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(net=qdq_networks())
def test_qdq_without_problems_is_bit_exact(net) -> None:
    model = onnx_model(net, "qdq")
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} & ops or not any(
        isinstance(m, QRequant) for m in net.layers
    )
    x = random_inputs(net, 24, seed=7)
    ref = net.integer_forward(x)
    levels = ["none", "basic"]
    if not qdq_problems(net, fused_kernels=True):
        levels.append("all")
    for level in levels:
        assert torch.equal(onnx_logits(session(model, level), x), ref), level


def _differs(net: QNetwork, x: torch.Tensor, level: str = "none") -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InexactExportWarning)
        model = onnx_model(net, "qdq", strict=False)
    return not torch.equal(onnx_logits(session(model, level), x), net.integer_forward(x))


U8 = FixedPointFormat(8, False, 0)


def _one_linear(rq: QRequant | None, w: float = 1.0) -> QNetwork:
    lin = QLinear.from_int(torch.tensor([[w]]), None, FixedPointFormat(8, True, 1), None)
    layers = [lin] + ([rq] if rq is not None else [])
    return QNetwork(layers + [QLinear.from_int(torch.eye(2)[:, :1], None, U8, None)], (1,), U8)


def test_half_up_rounding_is_refused_and_really_differs() -> None:
    net = _one_linear(QRequant(FixedPointFormat(8, True, 0), "half_up"))
    problems = qdq_problems(net)
    assert any("half_up" in p for p in problems)
    with pytest.raises(FormatError, match="half_up"):
        onnx_model(net, "qdq")
    with pytest.warns(InexactExportWarning):
        onnx_model(net, "qdq", strict=False)
    assert _differs(net, torch.tensor([[1]]))  # 1 * 1/2 = 0.5: half up 1, half even 0
    exact = _one_linear(QRequant(FixedPointFormat(8, True, 0), "half_even"))
    assert not qdq_problems(exact)
    assert not _differs(exact, torch.arange(256).view(-1, 1))


@pytest.mark.parametrize("bits", [4, 7, 12])
def test_widths_without_a_quantize_type_are_refused_and_really_saturate_wrongly(bits) -> None:
    net = _one_linear(QRequant(FixedPointFormat(bits, True, 1), "half_even"), w=127.0)
    assert any("saturates" in p for p in qdq_problems(net))
    with pytest.raises(FormatError, match="saturates"):
        onnx_model(net, "qdq")
    assert _differs(net, torch.tensor([[255]]))


def test_float32_sums_beyond_2_24_are_refused_and_really_round() -> None:
    u16 = FixedPointFormat(16, False, 0)
    lin = QLinear.from_int(
        torch.tensor([[32767.0], [1.0]]), None, FixedPointFormat(16, True, 0), None
    )
    net = QNetwork([lin], (1,), u16)
    assert any("2**24" in p for p in qdq_problems(net))
    assert _differs(net, torch.tensor([[65535]]))  # 65535 * 32767 is odd and needs 31 bits
    small = QNetwork([lin], (1,), FixedPointFormat(9, False, 0))  # 511 * 32767 < 2**24
    assert not qdq_problems(small)
    assert not _differs(small, torch.arange(512).view(-1, 1))


def test_fused_kernel_condition() -> None:
    """8-bit weights beyond ±64 are exact as written, and flagged for fused uint8×int8 kernels."""
    i8 = FixedPointFormat(8, True, 7)
    for wmax, flagged in ((127, True), (64, False), (-64, False), (-65, True)):
        w = torch.full((3, 16), float(wmax))
        w[1] = min(127, -wmax)
        net = QNetwork([QLinear.from_int(w, None, i8, None)], (16,), FixedPointFormat(8, False, 8))
        assert not qdq_problems(net)
        assert bool(qdq_problems(net, fused_kernels=True)) == flagged
        x = torch.full((2, 16), 255)
        x[1, ::3] = 0
        assert not _differs(net, x, "basic")
        if not flagged:
            assert not _differs(net, x, "all")


def test_qdq_graph_interface() -> None:
    net = QNetwork(
        [
            QConv2d.from_int(
                torch.ones(2, 1, 3, 3), None, FixedPointFormat(4, True, 2), None, 1, 1
            ),
            QRequant(FixedPointFormat(8, False, 3), "half_even"),
            QAvgPool2d(2),
            QFlatten(),
            QLinear.from_int(torch.ones(3, 2 * 2 * 2), None, FixedPointFormat(4, True, 2), None),
        ],
        (1, 4, 4),
    )
    model = onnx_model(net, "qdq")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and "Conv" in ops and "Gemm" in ops
    assert model.opset_import[0].version == 13
    wide = QNetwork(
        [QLinear.from_int(torch.ones(2, 2), None, FixedPointFormat(12, True, 0), None)], (2,)
    )
    assert onnx_model(wide, "qdq").opset_import[0].version == 21  # int16 weights
    x = random_inputs(net, 16)
    assert torch.equal(onnx_logits(session(model), x), net.integer_forward(x))
