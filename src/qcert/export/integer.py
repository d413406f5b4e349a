"""The integer-only ONNX graph of a :class:`~qcert.quant.QNetwork` (flavour ``"integer"``).

Every tensor is an integer tensor and every operator is exact integer arithmetic, so onnxruntime's
logits equal ``net.integer_forward`` bit for bit (docs/export.md gives the argument per operator):

* affine layers take one of two paths, chosen per layer from sound interval bounds of its input over
  the whole input range:

  - **8-bit kernels** ``MatMulInteger`` / ``ConvInteger`` with *uint8* activations and *uint8*
    weights and zero points (signed values are stored offset by 128). uint8×uint8 is used because
    onnxruntime's uint8×int8 kernels saturate 16-bit pair sums on AVX2 CPUs without VNNI. Taken
    only when activations and weights fit 8 bits and the fan-in is at most
    :data:`INT8_MAX_FAN_IN`, so that no int32 sum of the kernel can overflow;
  - **int64** ``MatMul`` (convolution as a ``Gather`` of the padded input's windows, then
    ``MatMul``): exact for every format qcert allows (its values stay below 2**62);

  then ``Cast`` to int64 and an int64 ``Add`` of the bias at the accumulator's scale;
* requantization: ``Mod``/``Sub``/``Div`` by ``2**s`` (``Mod`` with ``fmod=0`` floors, so the
  ``Div`` is exact and does not depend on how integer division rounds), an ``Add`` of ``2**(s-1)``
  for half-up, a parity correction for half-even, ``Mul`` by ``2**k`` for left shifts, and
  saturation with ``Less``/``Greater``/``Where``;
* average pooling: one ``Gather`` per window offset and int64 ``Add`` (the window sum);

onnxruntime's int64 ``Clip``/``Min``/``Max`` (wrong comparisons from 2**31 on AVX2) and
``ReduceSum`` (accumulates in double: wrong above 2**53) are avoided on purpose.
* flatten: ``Flatten``.

The graph's input is *uint8* when the input format is unsigned with at most 8 bits (pixels), else
*int64*; its output ``logits`` is int64 N×K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from onnx import TensorProto

from qcert.errors import FormatError
from qcert.export.builder import NP_OF, GraphBuilder, conv_attributes, int_dtype_for
from qcert.quant import QAvgPool2d, QConv2d, QFlatten, QLayer, QLinear, QNetwork, QRequant, Rounding

#: largest fan-in of the 8-bit path: 2 * 255 * 255 * fan_in < 2**31, so every partial sum of
#: products of uint8 codes and every zero-point correction term fits an int32.
INT8_MAX_FAN_IN = ((1 << 31) - 1) // (2 * 255 * 255)
#: largest right shift written (``2**s`` must be an int64 constant)
MAX_RIGHT_SHIFT = 62
#: largest left shift written: a saturated 16-bit value times ``2**k`` stays below 2**62
MAX_LEFT_SHIFT = 46

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Val:
    """A tensor of the main chain: its name, ONNX element type and shape without the batch."""

    name: str
    dtype: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class AffinePath:
    """How an affine layer is computed: ``"int8"`` (MatMulInteger/ConvInteger with uint8 codes
    offset by ``x_offset`` / ``w_offset``) or ``"int64"`` (MatMul on int64)."""

    kind: str
    x_offset: int = 0
    w_offset: int = 0


INT64_PATH = AffinePath("int64")


def input_elem_type(net: QNetwork) -> int:
    """uint8 for unsigned input formats of at most 8 bits, int64 otherwise."""
    f = net.input_format
    return TensorProto.UINT8 if (not f.signed and f.bits <= 8) else TensorProto.INT64


@torch.no_grad()
def layer_input_bounds(net: QNetwork) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sound elementwise int64 bounds of every layer's input over the whole input range (one
    entry per layer, then the logits' bounds): QA-IBP interval propagation, exact per step."""
    lo_v, hi_v = net.input_range
    lo = torch.full((1, *net.input_shape), lo_v, dtype=torch.int64)
    hi = torch.full((1, *net.input_shape), hi_v, dtype=torch.int64)
    out = []
    for layer in net.layers:
        out.append((lo, hi))
        lo, hi = layer.int_bounds(lo, hi)
    out.append((lo, hi))
    return out


def _u8_offset(lo: int, hi: int) -> int | None:
    """0 when ``[lo, hi]`` fits uint8, 128 when it fits int8, else None."""
    if 0 <= lo and hi <= 255:
        return 0
    if -128 <= lo and hi <= 127:
        return 128
    return None


def fan_in(layer: QLinear | QConv2d) -> int:
    return int(np.prod(layer.weight.shape[1:]))


def plan_affine(
    layer: QLinear | QConv2d, lo: torch.Tensor, hi: torch.Tensor, int8_kernels: bool
) -> AffinePath:
    """The 8-bit path when it is provably exact for every input in the bounds, else int64."""
    if not int8_kernels or fan_in(layer) > INT8_MAX_FAN_IN:
        return INT64_PATH
    wf = layer.weight_format
    w_off = _u8_offset(wf.qmin, wf.qmax)
    x_off = _u8_offset(int(lo.min()), int(hi.max()))
    if w_off is None or x_off is None:
        return INT64_PATH
    return AffinePath("int8", x_off, w_off)


# ------------------------------------------------------------------------- representation
def to_int64(b: GraphBuilder, v: Val, tag: str) -> Val:
    if v.dtype == TensorProto.INT64:
        return v
    return Val(
        b.node("Cast", [v.name], f"{tag}_i64", to=TensorProto.INT64), TensorProto.INT64, v.shape
    )


def to_u8(b: GraphBuilder, v: Val, offset: int, tag: str) -> Val:
    """uint8 codes ``value + offset`` (the caller has proved they lie in 0..255)."""
    if v.dtype == TensorProto.UINT8 and offset == 0:
        return v
    v = to_int64(b, v, tag)
    x = v.name
    if offset:
        x = b.node("Add", [x, b.const(offset, f"{tag}_xoff")], f"{tag}_shifted")
    return Val(b.node("Cast", [x], f"{tag}_u8", to=TensorProto.UINT8), TensorProto.UINT8, v.shape)


def _bias(
    b: GraphBuilder, layer: QLinear | QConv2d, acc: str, tag: str, conv: bool
) -> tuple[str, str | None]:
    bias = layer.int_bias_acc()
    if bias is None:
        return acc, None
    arr = bias.numpy().astype(np.int64)
    if conv:
        arr = arr.reshape(-1, 1, 1)
    name = b.const(arr, f"{tag}_bias")
    return b.node("Add", [acc, name], f"{tag}_acc"), name


def _weight_storage(layer: QLinear | QConv2d) -> int:
    wf = layer.weight_format
    return int_dtype_for(wf.qmin, wf.qmax)


def window_indices(
    hp: int, wp: int, kernel: tuple[int, int], stride: tuple[int, int]
) -> tuple[np.ndarray, int, int]:
    """Flat indices into an ``hp×wp`` plane of every window: shape (kh·kw, Ho·Wo), and Ho, Wo."""
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    i = np.arange(kh).reshape(kh, 1, 1, 1)
    j = np.arange(kw).reshape(1, kw, 1, 1)
    oh = np.arange(ho).reshape(1, 1, ho, 1)
    ow = np.arange(wo).reshape(1, 1, 1, wo)
    idx = (oh * sh + i) * wp + (ow * sw + j)
    return idx.reshape(kh * kw, ho * wo).astype(np.int64), ho, wo


# ------------------------------------------------------------------------- layers
def emit_linear(
    b: GraphBuilder, layer: QLinear, v: Val, path: AffinePath, tag: str
) -> tuple[Val, dict[str, str | None]]:
    w = layer.int_weight().numpy()
    if path.kind == "int8":
        x = to_u8(b, v, path.x_offset, tag)
        wt = b.const((w + path.w_offset).T.astype(np.uint8), f"{tag}_weight_u8")
        za = b.const(path.x_offset, f"{tag}_x_zero", TensorProto.UINT8)
        zb = b.const(path.w_offset, f"{tag}_w_zero", TensorProto.UINT8)
        acc32 = b.node("MatMulInteger", [x.name, wt, za, zb], f"{tag}_acc32")
        acc = b.node("Cast", [acc32], f"{tag}_acc64", to=TensorProto.INT64)
    else:
        x = to_int64(b, v, tag)
        wt = b.const(w.T.astype(NP_OF[_weight_storage(layer)]), f"{tag}_weight")
        w64 = b.node("Cast", [wt], f"{tag}_weight_i64", to=TensorProto.INT64)
        acc = b.node("MatMul", [x.name, w64], f"{tag}_matmul")
    out, bias = _bias(b, layer, acc, tag, conv=False)
    return Val(out, TensorProto.INT64, (layer.out_features,)), {"weight": wt, "bias": bias}


def emit_conv(
    b: GraphBuilder, layer: QConv2d, v: Val, path: AffinePath, tag: str
) -> tuple[Val, dict[str, str | None]]:
    assert layer.in_shape is not None and layer.out_shape is not None
    w = layer.int_weight().numpy()
    (ph, pw), (kh, kw) = layer.padding, layer.kernel_size
    o, ho, wo = layer.out_shape
    if path.kind == "int8":
        x = to_u8(b, v, path.x_offset, tag)
        wq = b.const((w + path.w_offset).astype(np.uint8), f"{tag}_weight_u8")
        za = b.const(path.x_offset, f"{tag}_x_zero", TensorProto.UINT8)
        zb = b.const(path.w_offset, f"{tag}_w_zero", TensorProto.UINT8)
        acc32 = b.node(
            "ConvInteger",
            [x.name, wq, za, zb],
            f"{tag}_acc32",
            **conv_attributes(layer),
        )
        acc = b.node("Cast", [acc32], f"{tag}_acc64", to=TensorProto.INT64)
    else:
        xn = to_int64(b, v, tag).name
        c, h, wd = layer.in_shape
        if ph or pw:
            pads = b.const(np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64), f"{tag}_pads")
            xn = b.node("Pad", [xn, pads], f"{tag}_padded", mode="constant")
        hp, wp = h + 2 * ph, wd + 2 * pw
        idx, ho2, wo2 = window_indices(hp, wp, (kh, kw), layer.stride)
        assert (ho2, wo2) == (ho, wo)
        plane = b.node(
            "Reshape",
            [xn, b.const(np.array([0, c, hp * wp], np.int64), f"{tag}_s1")],
            f"{tag}_planes",
        )
        win = b.node("Gather", [plane, b.const(idx, f"{tag}_windows")], f"{tag}_gather", axis=2)
        cols = b.node(
            "Reshape",
            [win, b.const(np.array([0, c * kh * kw, ho * wo], np.int64), f"{tag}_s2")],
            f"{tag}_cols",
        )
        wq = b.const(w.astype(NP_OF[_weight_storage(layer)]), f"{tag}_weight")
        w64 = b.node("Cast", [wq], f"{tag}_weight_i64", to=TensorProto.INT64)
        wm = b.node(
            "Reshape",
            [w64, b.const(np.array([o, c * kh * kw], np.int64), f"{tag}_s3")],
            f"{tag}_wmat",
        )
        prod = b.node("MatMul", [wm, cols], f"{tag}_matmul")
        acc = b.node(
            "Reshape",
            [prod, b.const(np.array([0, o, ho, wo], np.int64), f"{tag}_s4")],
            f"{tag}_conv",
        )
    out, bias = _bias(b, layer, acc, tag, conv=True)
    return Val(out, TensorProto.INT64, (o, ho, wo)), {"weight": wq, "bias": bias}


def saturate(b: GraphBuilder, x: str, qmin: str, qmax: str, tag: str) -> str:
    """``min(max(x, qmin), qmax)`` as ``Where(Less(..))``/``Where(Greater(..))``.

    Not ``Clip``/``Max``/``Min``: onnxruntime's int64 kernels of those compare wrongly on AVX2 CPUs
    for values whose magnitude reaches 2**31 (checked by tests/export/test_export_operators.py).
    """
    low = b.node("Less", [x, qmin], f"{tag}_below")
    x = b.node("Where", [low, qmin, x], f"{tag}_lo")
    high = b.node("Greater", [x, qmax], f"{tag}_above")
    return b.node("Where", [high, qmax, x], tag)


def emit_requant(b: GraphBuilder, layer: QRequant, v: Val, tag: str) -> Val:
    """``clip(round(acc / 2**s))`` or ``clip(clip(acc) * 2**k)`` with integer operators only."""
    assert layer.in_frac is not None
    fmt, rounding = layer.format, layer.rounding
    s = layer.in_frac - fmt.frac
    x = to_int64(b, v, tag).name
    qmin = b.const(fmt.qmin, f"{tag}_qmin")
    qmax = b.const(fmt.qmax, f"{tag}_qmax")
    if s < 0:
        k = -s
        if k > MAX_LEFT_SHIFT:
            raise FormatError(
                f"{tag}: requantization shifts left by {k} bits; the integer ONNX export "
                f"supports at most {MAX_LEFT_SHIFT}"
            )
        # saturating first is exact: |x| > qmax implies |x * 2**k| > qmax, and keeps int64 safe
        x = saturate(b, x, qmin, qmax, f"{tag}_presat")
        x = b.node("Mul", [x, b.const(1 << k, f"{tag}_scale")], f"{tag}_lshift")
    elif s > 0:
        if s > MAX_RIGHT_SHIFT:
            raise FormatError(
                f"{tag}: requantization shifts right by {s} bits; the integer ONNX export "
                f"supports at most {MAX_RIGHT_SHIFT}"
            )
        d = b.const(1 << s, f"{tag}_div")
        if rounding is Rounding.HALF_UP:
            x = b.node("Add", [x, b.const(1 << (s - 1), f"{tag}_half")], f"{tag}_plus_half")
        r = b.node("Mod", [x, d], f"{tag}_rem", fmod=0)  # floor modulo: r in [0, 2**s)
        q = b.node("Div", [b.node("Sub", [x, r], f"{tag}_down"), d], f"{tag}_floor")
        if rounding is Rounding.HALF_EVEN:
            # q + floor((r + parity(q) + 2**(s-1) - 1) / 2**s): +1 iff r > half or r == half, q odd
            p = b.node("Mod", [q, b.const(2, f"{tag}_two")], f"{tag}_parity", fmod=0)
            t = b.node("Add", [r, p], f"{tag}_rp")
            t = b.node("Add", [t, b.const((1 << (s - 1)) - 1, f"{tag}_half_m1")], f"{tag}_tie")
            up = b.node("Div", [t, d], f"{tag}_up")
            q = b.node("Add", [q, up], f"{tag}_rounded")
        x = q
    x = saturate(b, x, qmin, qmax, f"{tag}_sat")
    return Val(x, TensorProto.INT64, v.shape)


def emit_avgpool(b: GraphBuilder, layer: QAvgPool2d, v: Val, tag: str) -> Val:
    """The window sum (the exact average at ``shift`` more fractional bits): one ``Gather`` per
    window offset and int64 ``Add`` (not ``ReduceSum``, which onnxruntime accumulates in double)."""
    assert layer.in_shape is not None and layer.out_shape is not None
    c, h, w = layer.in_shape
    x = to_int64(b, v, tag).name
    idx, ho, wo = window_indices(h, w, layer.kernel_size, layer.stride)
    plane = b.node(
        "Reshape", [x, b.const(np.array([0, c, h * w], np.int64), f"{tag}_s1")], f"{tag}_planes"
    )
    total = ""
    for k in range(idx.shape[0]):
        part = b.node(
            "Gather", [plane, b.const(idx[k], f"{tag}_offset{k}")], f"{tag}_part{k}", axis=2
        )
        total = part if k == 0 else b.node("Add", [total, part], f"{tag}_sum{k}")
    out = b.node(
        "Reshape", [total, b.const(np.array([0, c, ho, wo], np.int64), f"{tag}_s2")], f"{tag}_pool"
    )
    return Val(out, TensorProto.INT64, (c, ho, wo))


def emit_layer(
    b: GraphBuilder, layer: QLayer, v: Val, path: AffinePath | None, tag: str
) -> tuple[Val, dict[str, str | None]]:
    """Emit one layer; returns the output and the names of its weight/bias initializers."""
    if isinstance(layer, QLinear):
        return emit_linear(b, layer, v, path or INT64_PATH, tag)
    if isinstance(layer, QConv2d):
        return emit_conv(b, layer, v, path or INT64_PATH, tag)
    if isinstance(layer, QRequant):
        return emit_requant(b, layer, v, tag), {}
    if isinstance(layer, QAvgPool2d):
        return emit_avgpool(b, layer, v, tag), {}
    if isinstance(layer, QFlatten):
        shape = (int(np.prod(v.shape)),)
        return Val(b.node("Flatten", [v.name], f"{tag}_flat", axis=1), v.dtype, shape), {}
    raise FormatError(f"{tag}: layer type {type(layer).__name__} cannot be exported")


def plan_integer(net: QNetwork, int8_kernels: bool = True) -> list[AffinePath | None]:
    """The path of every layer (None for layers without weights)."""
    bounds = layer_input_bounds(net)
    paths: list[AffinePath | None] = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, QLinear | QConv2d):
            paths.append(plan_affine(layer, *bounds[i], int8_kernels))
        else:
            paths.append(None)
    return paths


def build_integer(net: QNetwork, int8_kernels: bool = True) -> tuple[GraphBuilder, Val]:
    """All nodes of the integer graph; the output is named ``logits`` (int64 N×K)."""
    b = GraphBuilder()
    b.reserve(INPUT_NAME)
    b.reserve(OUTPUT_NAME)
    x = Val(INPUT_NAME, input_elem_type(net), net.input_shape)
    v = x
    for i, (layer, path) in enumerate(zip(net.layers, plan_integer(net, int8_kernels))):
        v, _ = emit_layer(b, layer, v, path, f"l{i}_{layer.kind}")
    v = to_int64(b, v, "out")
    if v.name == INPUT_NAME:
        v = Val(b.node("Identity", [v.name], "out"), v.dtype, v.shape)
    b.rename_output(v.name, OUTPUT_NAME)
    return b, x
