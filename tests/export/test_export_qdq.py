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

from qcert.errors import FormatError
from qcert.export import (
    InexactExportWarning,
    onnx_logits,
    onnx_model,
    qdq_problems,
    random_inputs,
    session,
)
from qcert.quant import (
    FixedPointFormat,
    QAvgPool2d,
    QConv2d,
    QFlatten,
    QLinear,
    QNetwork,
    QRequant,
)


def codes(g: torch.Generator, shape, fmt: FixedPointFormat, extreme: float) -> torch.Tensor:
    q = torch.randint(fmt.qmin, fmt.qmax + 1, shape, generator=g)
    u = torch.rand(shape, generator=g)
    q = torch.where(u < extreme / 2, torch.full_like(q, fmt.qmin), q)
    return torch.where(u > 1 - extreme / 2, torch.full_like(q, fmt.qmax), q).to(torch.float64)


@st.composite
def qdq_networks(draw):
    """Networks meant to be QDQ-exact: half-even 8/16-bit requantization, small sums."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    extreme = draw(st.sampled_from([0.0, 0.5, 1.0]))

    def wfmt():
        return FixedPointFormat(
            draw(st.sampled_from([2, 4, 7, 8, 12])), draw(st.booleans()), draw(st.integers(-2, 8))
        )

    def requant(in_frac: int) -> QRequant:
        bits = draw(st.sampled_from([8, 8, 16]))
        shift = draw(st.integers(-2, 12))
        fmt = FixedPointFormat(bits, draw(st.booleans()), max(-32, min(32, in_frac - shift)))
        return QRequant(fmt, "half_even")

    def bias(acc_frac: int, n: int):
        if not draw(st.booleans()):
            return None, None
        bf = FixedPointFormat(
            12, True, draw(st.integers(max(-32, acc_frac - 6), max(-32, min(32, acc_frac))))
        )
        return codes(g, (n,), bf, extreme), bf

    in_fmt = draw(
        st.sampled_from(
            [
                FixedPointFormat(8, False, 8),
                FixedPointFormat(4, False, 2),
                FixedPointFormat(8, True, 4),
                FixedPointFormat(12, True, 0),
            ]
        )
    )
    layers: list = []
    frac = in_fmt.frac
    if draw(st.booleans()):
        c, h, w = draw(st.integers(1, 2)), draw(st.integers(2, 6)), draw(st.integers(2, 6))
        shape: tuple[int, ...] = (c, h, w)
        input_shape = shape
        for _ in range(draw(st.integers(1, 2))):
            pad = draw(st.integers(0, 1))
            k = draw(st.integers(1, min(h, w) + 2 * pad))
            oc = draw(st.integers(1, 3))
            wf = wfmt()
            b, bf = bias(frac + wf.frac, oc)
            w_codes = codes(g, (oc, c, k, k), wf, extreme)
            conv = QConv2d.from_int(w_codes, b, wf, bf, draw(st.integers(1, 2)), pad)
            layers.append(conv)
            shape, frac = conv.bind(shape, frac)
            if draw(st.booleans()) and min(shape[1:]) >= 2:
                pool = QAvgPool2d(draw(st.sampled_from([(1, 2), (2, 1), (2, 2)])))
                layers.append(pool)
                shape, frac = pool.bind(shape, frac)
            rq = requant(frac)
            layers.append(rq)
            shape, frac = rq.bind(shape, frac)
            c, h, w = shape
        layers.append(QFlatten())
        d = c * h * w
    else:
        d = draw(st.integers(1, 6))
        input_shape = (d,)
    n_linear = draw(st.integers(1, 2))
    for i in range(n_linear):
        out = draw(st.integers(2, 5))
        wf = wfmt()
        b, bf = bias(frac + wf.frac, out)
        layers.append(QLinear.from_int(codes(g, (out, d), wf, extreme), b, wf, bf))
        frac += wf.frac
        if i < n_linear - 1 or draw(st.booleans()):
            rq = requant(frac)
            layers.append(rq)
            frac = rq.format.frac
        d = out
    net = QNetwork(layers, input_shape, in_fmt)
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
