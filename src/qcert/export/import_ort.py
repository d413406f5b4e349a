"""Reading the int8 models onnxruntime's ``quantize_static`` writes (QDQ and QOperator formats,
per-tensor and per-channel weights, uint8 and int8 activations) as the integer network
onnxruntime's CPU kernels compute (docs/export.md, "Deployed int8 models").

Each quantized operator becomes qcert layers with the same integers:

==========================================================  ===========================================
onnxruntime (QOperator; QDQ: ``DQ → op → Q``, fused by       qcert layers
onnxruntime from optimization level "extended" on)
==========================================================  ===========================================
``QLinearConv`` / ``QLinearMatMul`` / ``QGemm``            ``offset(z_x)`` → ``conv2d``/``linear``
                                                            (weights ``w − z_w``, int32 bias) →
                                                            ``rescale`` (float32,
                                                            ``fl32(fl32(s_x·s_w[c]) / s_y)``, ``z_y``)
``QLinearGlobalAveragePool``                                ``offset(z_x)`` → ``global_sumpool`` →
                                                            ``rescale`` (``fl32(s_x / fl32(s_y·HW))``)
``MaxPool`` on codes (QDQ: same scale and zero point)      ``maxpool2d``
``Flatten`` / flattening ``Reshape``                        ``flatten``
==========================================================  ===========================================

The network's input is the first ``QuantizeLinear``'s codes (uint8 or int8, the whole type's
range); its logits are the last quantized tensor's codes, which the graph's final
``DequantizeLinear`` turns into floats. Both scale/zero-point pairs are kept in the network's
``meta["onnxruntime"]``. Anything else is refused with a :class:`ModelFileError` naming the operator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from qcert.errors import FormatError, ModelFileError
from qcert.export.builder import GraphIndex, tensor_values
from qcert.export.import_qdq import ChainReader
from qcert.export.onnx_io import graph_io, input_shape
from qcert.quant import (
    FixedPointFormat,
    QConv2d,
    QFlatten,
    QGlobalSumPool,
    QLayer,
    QLinear,
    QMaxPool2d,
    QNetwork,
    QOffset,
    QRescale,
)
from qcert.quant.multiplier import ort_global_pool_scale, ort_output_scale, quantize_linear

__all__ = ["ORT_OPS", "QOPERATOR_OPS", "is_ort_quantized", "pair_saturation_cpu", "read_ort"]

#: the operators of onnxruntime's QOperator format that qcert reads
QOPERATOR_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearGlobalAveragePool"}
ORT_OPS = (
    "QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul, QGemm, "
    "QLinearGlobalAveragePool, Conv / Gemm / MatMul / GlobalAveragePool between "
    "DequantizeLinear and QuantizeLinear, MaxPool, Flatten, Reshape (flatten), Relu (removable), "
    "Identity"
)
_CODE_TYPES: dict[int, tuple[int, bool]] = {
    TensorProto.UINT8: (8, False),
    TensorProto.INT8: (8, True),
}
_WEIGHT_TYPES = {**_CODE_TYPES}
I8 = FixedPointFormat(8, True, 0)
I16 = FixedPointFormat(16, True, 0)
I32 = FixedPointFormat(32, True, 0)


@dataclass(frozen=True)
class QParams:
    """Scale, zero point and element type of a quantized tensor."""

    scale: float
    zero_point: int
    dtype: int

    @property
    def fmt(self) -> FixedPointFormat:
        bits, signed = _CODE_TYPES[self.dtype]
        return FixedPointFormat(bits, signed, 0)

    def same(self, other: QParams) -> bool:
        return (
            np.float32(self.scale) == np.float32(other.scale)
            and self.zero_point == other.zero_point
            and self.dtype == other.dtype
        )


def pair_saturation_cpu() -> bool | None:
    """True when this CPU has AVX2 but no AVX-VNNI / AVX512-VNNI (onnxruntime's u8×s8 kernels then
    use ``vpmaddubsw``, which saturates pair sums at int16); False when it has VNNI or no AVX2;
    None when unknown (no ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    return "avx2" in flags and not ({"avx_vnni", "avx512_vnni"} & set(flags))


def _is_pow2(v: np.ndarray) -> bool:
    return all(math.frexp(float(s))[0] == 0.5 for s in v.reshape(-1))


def is_ort_quantized(model: onnx.ModelProto) -> bool:
    """True for a graph qcert reads with :func:`read_ort`: it has QOperator operators, or its
    QuantizeLinear / DequantizeLinear nodes use a scale that is not a power of two or a nonzero
    zero point (qcert's own QDQ export never does)."""
    idx = GraphIndex.of_graph(model.graph)
    for n in idx.nodes:
        if n.op_type in QOPERATOR_OPS:
            return True
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) >= 2:
            s = idx.consts.get(n.input[1])
            if s is not None and s.data_type == TensorProto.FLOAT:
                if not _is_pow2(tensor_values(s)):
                    return True
            if len(n.input) >= 3 and n.input[2] in idx.consts:
                if np.any(tensor_values(idx.consts[n.input[2]]) != 0):
                    return True
    return False


class _OrtReader(ChainReader):
    chain_hint = " (residual connections need a graph model, which qcert does not have yet)"

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        super().__init__(model, name)
        self.saturation: list[str] = []

    # ------------------------------------------------------------------ helpers
    def scale(self, t: str, n: onnx.NodeProto, what: str) -> np.ndarray:
        if t not in self.idx.consts or self.idx.consts[t].data_type != TensorProto.FLOAT:
            raise self.err(n, f"{what} must be a float32 constant")
        v = tensor_values(self.idx.consts[t]).reshape(-1)
        if not v.size or not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise self.err(n, f"{what} must be positive and finite")
        return v.astype(np.float32)

    def qparams(self, n: onnx.NodeProto, s: int, z: int, what: str) -> QParams:
        """Per-tensor activation parameters from inputs ``s`` and ``z`` of ``n``."""
        sc = self.scale(n.input[s], n, f"the {what} scale")
        if sc.size != 1:
            raise self.err(n, f"per-channel {what} scales are not supported")
        if len(n.input) <= z or not n.input[z]:
            return QParams(float(sc[0]), 0, TensorProto.UINT8)
        zt = self.idx.consts.get(n.input[z])
        if zt is None:
            raise self.err(n, f"the {what} zero point must be a constant")
        if zt.data_type not in _CODE_TYPES:
            raise self.err(
                n,
                f"{what} codes of type {helper.tensor_dtype_to_np_dtype(zt.data_type)} are not "
                "supported (uint8 and int8 are)",
            )
        zv = tensor_values(zt).reshape(-1)
        if zv.size != 1:
            raise self.err(n, f"per-channel {what} zero points are not supported")
        if self.attrs(n).get("block_size", 0):
            raise self.err(n, "blocked quantization is not supported")
        return QParams(float(sc[0]), int(zv[0]), zt.data_type)

    def weight_dq(
        self, t: str, n: onnx.NodeProto
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """Codes, scales, zero points, element type and axis of ``DequantizeLinear`` of a
        constant weight."""
        pi = self.prod.get(t)
        dq = self.idx.nodes[pi] if pi is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.idx.consts:
            raise self.err(n, "the weight must be DequantizeLinear of a constant")
        assert pi is not None
        self.visited.add(pi)
        codes_t = self.idx.consts[dq.input[0]]
        zp = (
            self.const(dq.input[2], dq, "the zero point")
            if len(dq.input) > 2 and dq.input[2]
            else None
        )
        a = self.attrs(dq)
        if a.get("block_size", 0):
            raise self.err(dq, "blocked quantization is not supported")
        return (
            tensor_values(codes_t).astype(np.int64),
            self.scale(dq.input[1], dq, "the weight scale"),
            np.zeros(1, np.int64) if zp is None else zp.astype(np.int64).reshape(-1),
            codes_t.data_type,
            int(a.get("axis", 1)),
        )

    def bias_dq(self, t: str, n: onnx.NodeProto) -> np.ndarray:
        pi = self.prod.get(t)
        dq = self.idx.nodes[pi] if pi is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.idx.consts:
            raise self.err(n, "the bias must be DequantizeLinear of an int32 constant")
        assert pi is not None
        self.visited.add(pi)
        if self.idx.consts[dq.input[0]].data_type != TensorProto.INT32:
            raise self.err(dq, "the bias must be int32 codes")
        if len(dq.input) > 2 and dq.input[2]:
            if np.any(self.const(dq.input[2], dq, "the bias zero point") != 0):
                raise self.err(dq, "a bias zero point must be 0")
        return self.const(dq.input[0], dq, "the bias").astype(np.int64).reshape(-1)

    def add(self, layer: QLayer, n: onnx.NodeProto | None) -> None:
        try:
            self.shape, _ = layer.bind(self.shape, 0)
        except FormatError as e:
            raise self.err(n, str(e)) from None
        self.layers.append(layer)

    # ------------------------------------------------------------------ layers
    def affine(
        self,
        n: onnx.NodeProto,
        kind: str,
        x: QParams,
        w: np.ndarray,
        sw: np.ndarray,
        zw: np.ndarray,
        wtype: int,
        bias: np.ndarray | None,
        y: QParams,
        attrs: dict[str, Any],
        qdq: bool = False,
    ) -> None:
        """``offset → conv2d/linear → rescale`` for a quantized Conv / MatMul / Gemm; ``w`` is
        out×in (×kh×kw) and ``sw``, ``zw`` have 1 or out values. ``qdq``: the operator comes from
        a QDQ group, whose int8 activations onnxruntime turns into uint8 (zero point + 128) before
        fusing (its ``QDQS8ToU8`` transformer), so it runs the u8 × s8 kernels too."""
        if wtype not in _WEIGHT_TYPES:
            raise self.err(
                n, f"weights of type {helper.tensor_dtype_to_np_dtype(wtype)} are not supported"
            )
        out = w.shape[0]
        if sw.size not in (1, out) or zw.size not in (1, out):
            raise self.err(
                n, "weight scales and zero points must be per tensor or per output channel"
            )
        wc = w - zw.reshape(-1, *([1] * (w.ndim - 1)))
        wf = I8 if int(wc.min()) >= -128 and int(wc.max()) <= 127 else I16
        if bias is not None and bias.shape[0] != out:
            raise self.err(n, f"bias of {bias.shape[0]} values for {out} outputs")
        if x.zero_point:
            self.add(QOffset(x.zero_point), n)
        wt = torch.from_numpy(wc)
        bt = None if bias is None else torch.from_numpy(bias)
        layer: QLayer
        if kind == "conv":
            layer = QConv2d.from_int(
                wt, bt, wf, None if bt is None else I32, attrs["stride"], attrs["padding"]
            )
        else:
            layer = QLinear.from_int(wt, bt, wf, None if bt is None else I32)
        self.add(layer, n)
        self.add(
            QRescale(y.fmt, y.zero_point, scale=ort_output_scale(x.scale, sw.tolist(), y.scale)), n
        )
        # onnxruntime's u8 × s8 kernels on AVX2 without VNNI (vpmaddubsw) add two products of
        # the same output channel in int16 with saturation: with codes in [0, 255] that is exact
        # whenever |w1| + |w2| <= 128 for every two weights of a channel, whichever two the kernel
        # pairs, i.e. when the two largest |w| of every channel sum to at most 128
        if wtype == TensorProto.INT8 and not np.any(zw) and wc.size:
            flat = np.sort(np.abs(wc.reshape(out, -1)), axis=1)
            top2 = int((flat[:, -1] + (flat[:, -2] if flat.shape[1] > 1 else 0)).max())
            if (x.dtype == TensorProto.UINT8 or qdq) and top2 > 128:
                self.saturation.append(
                    f"layer {len(self.layers) - 2} ({n.op_type}, two weights of a channel sum "
                    f"to |w| {top2} > 128)"
                )
            elif x.dtype == TensorProto.INT8 and not qdq and int(wc.min()) == -128:
                self.saturation.append(f"layer {len(self.layers) - 2} ({n.op_type}, w = -128)")

    def conv_attrs(self, n: onnx.NodeProto, kernel: tuple[int, ...]) -> dict[str, Any]:
        a = self.attrs(n)
        if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise self.err(n, "grouped or dilated convolutions are not supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.err(n, "auto_pad is not supported; give explicit pads")
        if a.get("channels_last", 0):
            raise self.err(n, "channels_last convolutions are not supported")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4 or pads[:2] != pads[2:]:
            raise self.err(n, f"pads {pads} are not symmetric")
        if list(a.get("kernel_shape", kernel)) != list(kernel):
            raise self.err(n, "kernel_shape differs from the weight's shape")
        return {"stride": tuple(a.get("strides", [1, 1])), "padding": (pads[0], pads[1])}

    def gemm_weight(
        self, n: onnx.NodeProto, w: np.ndarray, trans_b: int, axis: int, sw: np.ndarray
    ) -> np.ndarray:
        """The weight as out×in; checks per-channel scales run along the output axis."""
        if w.ndim != 2:
            raise self.err(n, "the weight must be a matrix")
        out_axis = 0 if trans_b else 1
        if sw.size > 1 and axis % 2 != out_axis:
            raise self.err(n, "per-channel weight scales must run along the output features")
        return w if trans_b else w.T

    def maxpool(self, n: onnx.NodeProto) -> None:
        a = self.attrs(n)
        if (
            a.get("ceil_mode", 0)
            or any(d != 1 for d in a.get("dilations", [1, 1]))
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or a.get("storage_order", 0)
            or len(n.output) > 1
        ):
            raise self.err(n, "only MaxPool without ceil_mode, dilation, auto_pad or indices")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4 or pads[:2] != pads[2:]:
            raise self.err(n, f"pads {pads} are not symmetric")
        kernel = tuple(a["kernel_shape"])
        try:
            layer = QMaxPool2d(kernel, tuple(a.get("strides", [1, 1])), (pads[0], pads[1]))
        except FormatError as e:
            raise self.err(n, str(e)) from None
        self.add(layer, n)

    def flatten(self, n: onnx.NodeProto) -> None:
        if n.op_type == "Flatten":
            if self.attrs(n).get("axis", 1) != 1:
                raise self.err(n, "only Flatten(axis=1) is supported")
        else:
            target = [int(v) for v in self.const(n.input[1], n, "the shape").reshape(-1)]
            d = math.prod(self.shape)
            if (
                len(target) != 2
                or target[1] not in (-1, d)
                or target[0] not in (0, -1)
                or target == [-1, -1]
            ):
                raise self.err(n, f"only a flattening Reshape (to N×{d}) is supported")
        self.add(QFlatten(), n)

    def global_pool(self, n: onnx.NodeProto, x: QParams, y: QParams) -> None:
        if len(self.shape) != 3:
            raise self.err(n, f"global pooling expects C×H×W, got {self.shape}")
        if x.dtype != y.dtype:
            raise self.err(n, "input and output codes of different types")
        area = self.shape[1] * self.shape[2]
        s = ort_global_pool_scale(x.scale, y.scale, area)
        if not 2.0**-32 <= s < 256.0:
            raise self.err(n, f"scale ratio {s} outside onnxruntime's range [2**-32, 256)")
        if x.zero_point:
            self.add(QOffset(x.zero_point), n)
        self.add(QGlobalSumPool(), n)
        self.add(QRescale(y.fmt, y.zero_point, scale=[s]), n)

    # ------------------------------------------------------------------ QOperator nodes
    def qoperator(self, n: onnx.NodeProto, cur: QParams) -> QParams:
        op = n.op_type
        if op == "QLinearConv":
            x, y = self.qparams(n, 1, 2, "input"), self.qparams(n, 6, 7, "output")
            w = self.const(n.input[3], n, "the weight").astype(np.int64)
            if w.ndim != 4:
                raise self.err(n, "only 2-D convolutions are supported")
            sw = self.scale(n.input[4], n, "the weight scale")
            zw = self.const(n.input[5], n, "the weight zero point").astype(np.int64).reshape(-1)
            bias = (
                self.const(n.input[8], n, "the bias").astype(np.int64).reshape(-1)
                if len(n.input) > 8 and n.input[8]
                else None
            )
            attrs = self.conv_attrs(n, tuple(w.shape[2:]))
            wtype = self.idx.consts[n.input[3]].data_type
            self.affine(n, "conv", x, w, sw, zw, wtype, bias, y, attrs)
            return y
        if op == "QLinearMatMul":
            x, y = self.qparams(n, 1, 2, "input"), self.qparams(n, 6, 7, "output")
            w = self.const(n.input[3], n, "the weight").astype(np.int64)
            sw = self.scale(n.input[4], n, "the weight scale")
            zw = self.const(n.input[5], n, "the weight zero point").astype(np.int64).reshape(-1)
            wtype = self.idx.consts[n.input[3]].data_type
            w = self.gemm_weight(n, w, 0, 1, sw)
            self.affine(n, "linear", x, w, sw, zw, wtype, None, y, {})
            return y
        if op == "QGemm":
            a = self.attrs(n)
            if a.get("alpha", 1.0) != 1.0 or a.get("transA", 0):
                raise self.err(n, "only QGemm with alpha = 1 and transA = 0 is supported")
            if len(n.input) < 9 or not n.input[7]:
                raise self.err(n, "QGemm without a quantized output is not supported")
            x, y = self.qparams(n, 1, 2, "input"), self.qparams(n, 7, 8, "output")
            w = self.const(n.input[3], n, "the weight").astype(np.int64)
            sw = self.scale(n.input[4], n, "the weight scale")
            zw = self.const(n.input[5], n, "the weight zero point").astype(np.int64).reshape(-1)
            bias = (
                self.const(n.input[6], n, "the bias").astype(np.int64).reshape(-1)
                if n.input[6]
                else None
            )
            wtype = self.idx.consts[n.input[3]].data_type
            w = self.gemm_weight(n, w, int(a.get("transB", 0)), 0 if a.get("transB", 0) else 1, sw)
            self.affine(n, "linear", x, w, sw, zw, wtype, bias, y, {})
            return y
        if op == "QLinearGlobalAveragePool":
            if self.attrs(n).get("channels_last", 0):
                raise self.err(n, "channels_last pooling is not supported")
            x, y = self.qparams(n, 1, 2, "input"), self.qparams(n, 3, 4, "output")
            self.global_pool(n, x, y)
            return y
        raise AssertionError(op)

    # ------------------------------------------------------------------ QDQ: DQ → op → Q
    def qdq_op(self, n: onnx.NodeProto, x: QParams) -> tuple[str, QParams]:
        """``n`` consumes the dequantized codes (params ``x``); read it and the QuantizeLinear
        after it (a removable Relu in between); return the codes tensor and its params."""
        op = n.op_type
        out = n.output[0]
        nxt = self.next_node(out)
        if nxt is not None and nxt.op_type == "Relu":
            relu, out, nxt = nxt, nxt.output[0], self.next_node(nxt.output[0])
        else:
            relu = None
        if nxt is None or nxt.op_type != "QuantizeLinear":
            raise self.err(
                n,
                "a float operator must be followed by QuantizeLinear (onnxruntime then fuses "
                "them into an integer kernel)",
            )
        q = nxt
        y = self.qparams(q, 1, 2, "output")
        if relu is not None and y.zero_point != y.fmt.qmin:
            raise self.err(
                relu, "Relu is exact here only when the next zero point is the type's minimum"
            )
        if op == "Conv":
            w, sw, zw, wt, axis = self.weight_dq(n.input[1], n)
            if w.ndim != 4:
                raise self.err(n, "only 2-D convolutions are supported")
            if sw.size > 1 and axis != 0:
                raise self.err(n, "per-channel weight scales must run along the output channels")
            bias = self.bias_dq(n.input[2], n) if len(n.input) > 2 and n.input[2] else None
            attrs = self.conv_attrs(n, tuple(w.shape[2:]))
            self.affine(n, "conv", x, w, sw, zw, wt, bias, y, attrs, qdq=True)
        elif op in ("Gemm", "MatMul"):
            a = self.attrs(n)
            if op == "Gemm" and (
                a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0)
            ):
                raise self.err(n, "only Gemm with alpha = beta = 1 and transA = 0 is supported")
            w, sw, zw, wt, axis = self.weight_dq(n.input[1], n)
            tb = int(a.get("transB", 0)) if op == "Gemm" else 0
            w = self.gemm_weight(n, w, tb, axis, sw)
            bias = (
                self.bias_dq(n.input[2], n)
                if op == "Gemm" and len(n.input) > 2 and n.input[2]
                else None
            )
            self.affine(n, "linear", x, w, sw, zw, wt, bias, y, {}, qdq=True)
        elif op == "GlobalAveragePool":
            self.global_pool(n, x, y)
        elif op == "Relu":
            # DQ → Relu → Q with the same parameters and the zero point at the type's minimum:
            # every code is >= z, so every real value is >= 0 and the Relu changes nothing
            if not y.same(x) or y.zero_point != y.fmt.qmin:
                raise self.err(
                    n,
                    "Relu is exact here only between equal parameters whose zero point is the "
                    "type's minimum",
                )
        elif op in ("MaxPool", "Flatten", "Reshape"):
            if not y.same(x):
                raise self.err(
                    n,
                    f"{op} between different scales or zero points is not supported "
                    "(onnxruntime computes it on the codes only when they agree)",
                )
            if op == "MaxPool":
                self.maxpool(n)
            else:
                self.flatten(n)
        else:
            raise self.err(n, f"operator {op} is not supported; qcert imports {ORT_OPS}")
        return q.output[0], y

    # ------------------------------------------------------------------ the walk
    def read(self) -> QNetwork:
        inp, out = graph_io(self.g, self.name)
        self._out = out.name
        dtype, self.shape = input_shape(inp, self.name)
        in_shape = self.shape
        if dtype != TensorProto.FLOAT:
            raise ModelFileError(
                f"{self.name}: the input must be float32 and go through QuantizeLinear "
                "(as quantize_static writes it)"
            )
        n = self.next_node(inp.name)
        while n is not None and n.op_type in ("Flatten", "Reshape", "Identity"):
            # reshaping the float input commutes with the elementwise QuantizeLinear after it
            if n.op_type != "Identity":
                self.flatten(n)
            n = self.next_node(n.output[0])
        if n is None or n.op_type != "QuantizeLinear":
            raise self.err(n, "the float input must first go through QuantizeLinear")
        in_q = cur = self.qparams(n, 1, 2, "input")
        t = n.output[0]
        real = False  # the current tensor: codes (False) or their DequantizeLinear (True)
        out_q: QParams | None = None
        while True:
            n = self.next_node(t)
            if n is None:
                break
            op = n.op_type
            if op == "Identity":
                t = n.output[0]
            elif not real and op == "DequantizeLinear":
                q = self.qparams(n, 1, 2, "dequantized")
                if not q.same(cur):
                    raise self.err(n, "DequantizeLinear with other parameters than its codes'")
                t, real = n.output[0], True
                if t == self._out and not self.idx.consumers.get(t):
                    out_q = cur
            elif real and op == "QuantizeLinear":
                q = self.qparams(n, 1, 2, "requantized")
                if not q.same(cur):
                    raise self.err(
                        n, "DequantizeLinear → QuantizeLinear with new parameters is not supported"
                    )
                t, real = n.output[0], False
            elif not real and op in QOPERATOR_OPS:
                cur, t = self.qoperator(n, cur), n.output[0]
            elif not real and op == "MaxPool":
                self.maxpool(n)
                t = n.output[0]
            elif not real and op in ("Flatten", "Reshape"):
                self.flatten(n)
                t = n.output[0]
            elif real and op in (
                "Conv",
                "Gemm",
                "MatMul",
                "GlobalAveragePool",
                "MaxPool",
                "Flatten",
                "Reshape",
                "Relu",
            ):
                if n.input[0] != t:
                    raise self.err(n, "the chain must enter through the first input")
                t, cur = self.qdq_op(n, cur)
                real = False
            else:
                raise self.err(n, f"operator {op} is not supported here; qcert imports {ORT_OPS}")
        if t != self._out:
            raise ModelFileError(f"{self.name}: the chain ends at '{t}', not the graph output")
        if out_q is None and real:
            raise ModelFileError(f"{self.name}: the output is not the dequantized codes")
        out_q = out_q or cur
        unread = [m for k, m in enumerate(self.idx.nodes) if k not in self.visited]
        if unread:
            raise self.err(unread[0], "this node is not on the chain from input to output")
        if not any(isinstance(m, QRescale) for m in self.layers):
            raise ModelFileError(f"{self.name}: the graph has no quantized layer")
        meta = {
            "onnxruntime": {
                "input": {
                    "scale": in_q.scale,
                    "zero_point": in_q.zero_point,
                    "type": "int8" if in_q.fmt.signed else "uint8",
                },
                "output": {
                    "scale": out_q.scale,
                    "zero_point": out_q.zero_point,
                    "type": "int8" if out_q.fmt.signed else "uint8",
                },
                "pair_saturation": self.saturation,
                # True when the codes of images scaled by x/255 (PyTorch's ToTensor) are the pixels
                # themselves: then dataset pixels can be fed to the imported network unchanged
                "pixels_are_codes": bool(
                    not in_q.fmt.signed
                    and np.array_equal(
                        quantize_linear(
                            (np.arange(256) / 255).astype(np.float32),
                            in_q.scale,
                            in_q.zero_point,
                            0,
                            255,
                        ),  # fmt: skip
                        np.arange(256),
                    )
                ),
            }
        }
        return QNetwork(self.layers, in_shape, in_q.fmt, None, None, meta)


def ort_problems(net: QNetwork) -> list[str]:
    """Why onnxruntime's int32 accumulators might not hold ``net``'s exact integers: an affine
    accumulator or a pooling sum that can leave int32 for some input in the input range (sound
    interval bounds over the whole range)."""
    lo_v, hi_v = net.input_range
    lo = torch.full((1, *net.input_shape), lo_v, dtype=torch.int64)
    hi = torch.full((1, *net.input_shape), hi_v, dtype=torch.int64)
    out = []
    for i, (layer, (l, u)) in enumerate(zip(net.layers, net.int_bounds(lo, hi))):
        if isinstance(layer, QLinear | QConv2d | QGlobalSumPool):
            top = max(-int(l.min()), int(u.max()))
            if top >= 1 << 31:
                out.append(f"layer {i} ({layer.kind}) can reach {top}, beyond int32")
    return out


def read_ort(model: onnx.ModelProto, name: str) -> QNetwork:
    """The integer network onnxruntime computes for a ``quantize_static`` model (module docs)."""
    try:
        return _OrtReader(model, name).read()
    except FormatError as e:
        raise ModelFileError(f"{name}: {e}") from None
