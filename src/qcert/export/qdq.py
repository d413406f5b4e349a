"""The QDQ ONNX graph of a :class:`~qcert.quant.QNetwork` (flavour ``"qdq"``), for tools that
expect ``QuantizeLinear``/``DequantizeLinear`` around float operators.

Weights are ``DequantizeLinear`` of int8/int16 codes (scale ``2**-frac``, zero point 0), biases
``DequantizeLinear`` of int32 codes at the accumulator's scale; Conv / Gemm / AveragePool run in
float32; every requantization is ``QuantizeLinear`` (scale ``2**-frac``, zero point 0) followed by
``DequantizeLinear`` for the next layer. The input is uint8 (unsigned input formats of at most 8
bits) or int64, the output int64 logits.

This reproduces the integer semantics bit for bit exactly when :func:`qdq_problems` is empty:

* ``QuantizeLinear`` rounds half to even and saturates to its output type, so every requantization
  must round ``half_even`` and have a format whose range is a type's range: 8 or 16 bits (int16 /
  uint16 need opset 21);
* float32 holds integers exactly below 2**24, so every partial sum of every Conv/Gemm (in units of
  the accumulator, bias included) and every pooling window sum must stay below 2**24, for every
  input in the input range (checked with sound interval bounds); power-of-two scales are exact.
"""

from __future__ import annotations

import torch
from onnx import TensorProto

from qcert.errors import FormatError
from qcert.export.builder import NP_OF, GraphBuilder, conv_attributes
from qcert.export.integer import INPUT_NAME, OUTPUT_NAME, Val, input_elem_type, layer_input_bounds
from qcert.quant import QAvgPool2d, QConv2d, QFlatten, QLinear, QNetwork, QRequant, Rounding

#: (bits, signed) → QuantizeLinear output type, and the opset that type needs
QDQ_TYPES: dict[tuple[int, bool], tuple[int, int]] = {
    (8, True): (TensorProto.INT8, 13),
    (8, False): (TensorProto.UINT8, 13),
    (16, True): (TensorProto.INT16, 21),
    (16, False): (TensorProto.UINT16, 21),
}
# int4/uint4 (opset 21) are left out: onnxruntime 1.31 fuses DQ(int4)→Conv into a QLinearConv that
# rejects int4, so such a model does not even load at its default optimization level.
FLOAT32_EXACT = 1 << 24
FUSED_MAX_ABS_WEIGHT = 64  # 255 * (64 + 64) = 32640 fits int16
MAX_ABS_FRAC_F32 = 100  # values q * 2**-frac with |q| < 2**24 stay normal float32 numbers


def q_type(bits: int, signed: bool) -> tuple[int, int]:
    """The QuantizeLinear output type of a ``bits``-wide format (exact when the ranges agree) and
    the opset it needs: the narrower of 8 and 16 bits that holds the format."""
    for width in (8, 16):
        if bits <= width:
            return QDQ_TYPES[(width, signed)]
    raise FormatError(f"no QuantizeLinear type holds a {bits}-bit format")


def _weight_type(bits: int, signed: bool) -> tuple[int, int]:
    if bits <= 8:
        return (TensorProto.INT8, 13) if signed else (TensorProto.UINT8, 13)
    return (TensorProto.INT16, 21) if signed else (TensorProto.UINT16, 21)


@torch.no_grad()
def qdq_problems(
    net: QNetwork, fused_kernels: bool = False, requantization: bool = True
) -> list[str]:
    """Reasons the QDQ graph of ``net`` may differ from ``integer_forward``; empty when it is
    provably bit-exact as written (half-even 8/16-bit requantization, float32 sums below 2**24).

    With ``fused_kernels``, also the condition for backends that fuse DQ→Conv/Gemm→Q into
    uint8×int8 integer kernels (onnxruntime from optimization level "extended" on): on x86 CPUs
    without VNNI those add pairs of products in saturating int16 (``vpmaddubsw``), which is exact
    only while ``255 * (|w1| + |w2|) <= 32767``, i.e. int8 weights within [-64, 64].
    With ``requantization=False``, only the float32 conditions (for a graph whose requantizations
    are already known to be QuantizeLinear's, as in an imported one).
    """
    problems = []
    bounds = layer_input_bounds(net)
    fracs = {net.input_format.frac}
    for i, layer in enumerate(net.layers):
        name = f"layer {i} ({layer.kind})"
        lo, hi = bounds[i]
        xm = torch.maximum(lo.abs(), hi.abs())
        assert layer.out_frac is not None
        fracs.add(layer.out_frac)
        if isinstance(layer, QRequant) and requantization:
            if layer.rounding is not Rounding.HALF_EVEN:
                problems.append(
                    f"{name}: rounds {layer.rounding.value}; QuantizeLinear rounds half to even"
                )
            if (layer.format.bits, layer.format.signed) not in QDQ_TYPES:
                problems.append(
                    f"{name}: format {layer.format} saturates at [{layer.format.qmin}, "
                    f"{layer.format.qmax}], not the range of a QuantizeLinear type "
                    "(8 or 16 bits)"
                )
        elif isinstance(layer, QLinear | QConv2d):
            w = layer.int_weight().abs()
            mags = layer._affine_int(xm, w)
            bias = layer.int_bias_acc()
            if bias is not None:
                mags = mags + bias.abs().view(1, -1, *([1] * (mags.dim() - 2)))
            worst = int(mags.max()) if mags.numel() else 0
            if worst >= FLOAT32_EXACT:
                problems.append(
                    f"{name}: float32 sums can reach {worst} ≥ 2**24 accumulator units "
                    f"(= 2**{worst.bit_length() - 1}); float32 is exact only below 2**24"
                )
            fracs.add(layer.weight_format.frac)
            fracs.add(layer.acc_frac)
            wf = layer.weight_format
            wmax = int(w.max()) if w.numel() else 0
            if fused_kernels and wf.signed and wf.bits <= 8 and wmax > FUSED_MAX_ABS_WEIGHT:
                problems.append(
                    f"{name}: weights reach |w| = {wmax} > {FUSED_MAX_ABS_WEIGHT}; fused "
                    "uint8×int8 kernels (onnxruntime QGemm/QLinearConv on x86 without VNNI) "
                    "saturate int16 pair sums; run at optimization level 'basic' or use 7-bit "
                    "weights"
                )
        elif isinstance(layer, QAvgPool2d):
            area = layer.kernel_size[0] * layer.kernel_size[1]
            worst = area * int(xm.max())
            if worst >= FLOAT32_EXACT:
                problems.append(f"{name}: float32 window sums can reach {worst} ≥ 2**24")
    bad = sorted(f for f in fracs if abs(f) > MAX_ABS_FRAC_F32)
    if bad:
        problems.append(f"fractional bits {bad} outside ±{MAX_ABS_FRAC_F32}: scales leave float32")
    return problems


def qdq_opset(net: QNetwork) -> int:
    """13, or 21 where a 16-bit quantized type is used."""
    opset = 13
    for layer in net.layers:
        if isinstance(layer, QRequant):
            opset = max(opset, q_type(layer.format.bits, layer.format.signed)[1])
        elif isinstance(layer, QLinear | QConv2d):
            opset = max(
                opset, _weight_type(layer.weight_format.bits, layer.weight_format.signed)[1]
            )
    return opset


def _scale(b: GraphBuilder, frac: int, tag: str) -> str:
    return b.const(2.0**-frac, f"{tag}_scale", TensorProto.FLOAT)


def _dq_const(b: GraphBuilder, codes: torch.Tensor, dtype: int, frac: int, tag: str) -> str:
    arr = codes.numpy().astype(NP_OF[dtype])
    q = b.const(arr, f"{tag}_q")
    z = b.const(0, f"{tag}_zero", dtype)
    return b.node("DequantizeLinear", [q, _scale(b, frac, tag), z], tag)


def build_qdq(net: QNetwork, strict: bool = True) -> tuple[GraphBuilder, Val]:
    """All nodes of the QDQ graph. Raises :class:`FormatError` listing :func:`qdq_problems` when the
    graph would not be bit-exact, unless ``strict`` is False."""
    if strict:
        problems = qdq_problems(net)
        if problems:
            raise FormatError(
                "the QDQ graph would not equal the integer semantics bit for bit: "
                + "; ".join(problems)
                + " (use the integer flavour, or allow an inexact export)"
            )
    b = GraphBuilder()
    b.reserve(INPUT_NAME)
    b.reserve(OUTPUT_NAME)
    x = Val(INPUT_NAME, input_elem_type(net), net.input_shape)
    # a tensor is (name, dtype, frac): dtype FLOAT holds real values, an integer type holds codes
    name, dtype, frac = x.name, x.dtype, net.input_format.frac
    if dtype == TensorProto.INT64:
        # Cast + Mul, not DequantizeLinear(int32): onnxruntime's QDQ fusion turns DQ(int32) -> Gemm
        # into a QGemm that rejects int32. Exact: |input| < 2**16 and the scale is a power of two.
        xf = b.node("Cast", [name], "input_float", to=TensorProto.FLOAT)
        name = b.node("Mul", [xf, _scale(b, frac, "input")], "input_real")
        dtype = TensorProto.FLOAT

    def to_float(tag: str) -> str:
        nonlocal name, dtype
        if dtype != TensorProto.FLOAT:
            z = b.const(0, f"{tag}_in_zero", dtype)
            name = b.node(
                "DequantizeLinear", [name, _scale(b, frac, f"{tag}_in"), z], f"{tag}_real"
            )
            dtype = TensorProto.FLOAT
        return name

    for i, layer in enumerate(net.layers):
        tag = f"l{i}_{layer.kind}"
        assert layer.out_frac is not None
        if isinstance(layer, QLinear | QConv2d):
            xf = to_float(tag)
            wf = layer.weight_format
            wdt, _ = _weight_type(wf.bits, wf.signed)
            w = _dq_const(b, layer.int_weight(), wdt, wf.frac, f"{tag}_weight")
            ins = [xf, w]
            bias = layer.int_bias_acc()
            if bias is not None and bias.numel() and int(bias.abs().max()) >= 1 << 31:
                raise FormatError(
                    f"{tag}: the bias at the accumulator's scale does not fit int32, so no QDQ "
                    "graph can hold it; use the integer flavour"
                )
            if bias is not None:
                # at the accumulator's scale (input scale × weight scale), as QDQ tools expect:
                # onnxruntime fuses DQ→Gemm/Conv into QGemm/QLinearConv assuming exactly that
                ins.append(_dq_const(b, bias, TensorProto.INT32, layer.acc_frac, f"{tag}_bias"))
            if isinstance(layer, QConv2d):
                name = b.node("Conv", ins, f"{tag}_acc", **conv_attributes(layer))
            else:
                name = b.node("Gemm", ins, f"{tag}_acc", transB=1)
        elif isinstance(layer, QRequant):
            xf = to_float(tag)
            qdt, _ = q_type(layer.format.bits, layer.format.signed)
            z = b.const(0, f"{tag}_zero", qdt)
            name = b.node("QuantizeLinear", [xf, _scale(b, layer.format.frac, tag), z], f"{tag}_q")
            dtype = qdt
        elif isinstance(layer, QAvgPool2d):
            xf = to_float(tag)
            name = b.node(
                "AveragePool",
                [xf],
                f"{tag}_avg",
                kernel_shape=list(layer.kernel_size),
                strides=list(layer.stride),
            )
        elif isinstance(layer, QFlatten):
            name = b.node("Flatten", [to_float(tag)], f"{tag}_flat", axis=1)
        else:
            raise FormatError(f"{tag}: layer type {type(layer).__name__} cannot be exported")
        frac = layer.out_frac
    if dtype == TensorProto.FLOAT:
        name = b.node(
            "Mul", [name, b.const(2.0**frac, "out_units", TensorProto.FLOAT)], "out_units"
        )
    out = b.node("Cast", [name], "out", to=TensorProto.INT64)
    b.rename_output(out, OUTPUT_NAME)
    return b, x
