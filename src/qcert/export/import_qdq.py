"""Reading a QDQ ONNX graph structurally (no qcert metadata needed): constant weights dequantized
into ``Conv`` / ``Gemm`` / ``MatMul``, ``QuantizeLinear`` → ``DequantizeLinear`` requantizations,
pooling and flattening, every scale a power of two and every zero point 0."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from qcert.errors import FormatError, ModelFileError
from qcert.export.builder import GraphIndex, tensor_values
from qcert.export.onnx_io import graph_io, input_shape
from qcert.quant import (
    FixedPointFormat,
    QAvgPool2d,
    QConv2d,
    QFlatten,
    QLayer,
    QLinear,
    QNetwork,
    QRequant,
    Rounding,
)

__all__ = ["QDQ_OPS", "read_qdq"]


QDQ_OPS = (
    "QuantizeLinear, DequantizeLinear, Conv, Gemm, MatMul, Add (bias), Relu (before "
    "QuantizeLinear), AveragePool, Flatten, Reshape (flatten), Identity, Cast, Mul (output units)"
)
#: element type → (bits, signed) of the integer codes it holds
INT_TYPES: dict[int, tuple[int, bool]] = {
    TensorProto.UINT8: (8, False),
    TensorProto.INT8: (8, True),
    TensorProto.UINT16: (16, False),
    TensorProto.INT16: (16, True),
    TensorProto.INT32: (32, True),
    TensorProto.INT4: (4, True),
    TensorProto.UINT4: (4, False),
}


def _frac_of_scale(v: np.ndarray, where: str) -> int:
    if v.size != 1 or v.ndim > 1:
        raise ModelFileError(f"{where}: per-channel scales ({v.size} values) are not supported")
    s = float(v.reshape(-1)[0])
    if not math.isfinite(s) or s <= 0:
        raise ModelFileError(f"{where}: scale {s} is not a positive number")
    m, e = math.frexp(s)
    if m != 0.5:
        raise ModelFileError(
            f"{where}: scale {s!r} is not a power of two; qcert formats have scales 2**-frac"
        )
    return 1 - e  # s = 2**(e-1) = 2**-frac


class ChainReader:
    """What the structural ONNX readers share: the graph's index, the single chain of tensors
    from its input (``_out``, the output tensor, is set by the reader when it starts), errors
    that name the node, attributes and constants."""

    #: added to the error for a tensor that feeds several nodes
    chain_hint = ""

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        self.g = model.graph
        self.name = name
        self.idx = GraphIndex.of_graph(self.g)
        self.prod = {o: i for i, n in enumerate(self.idx.nodes) for o in n.output}
        self.visited: set[int] = set()
        self.layers: list[QLayer] = []
        self.shape: tuple[int, ...] = ()
        self._out = ""

    def err(self, n: onnx.NodeProto | None, msg: str) -> ModelFileError:
        where = f" ({n.op_type} node '{n.name or n.output[0]}')" if n is not None else ""
        return ModelFileError(f"{self.name}{where}: {msg}")

    def attrs(self, n: onnx.NodeProto) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in n.attribute}

    def const(self, t: str, n: onnx.NodeProto, what: str) -> np.ndarray:
        if t not in self.idx.consts:
            raise self.err(n, f"{what} must be a constant")
        return tensor_values(self.idx.consts[t])

    def next_node(self, t: str) -> onnx.NodeProto | None:
        cons = self.idx.consumers.get(t, [])
        if t == self._out and not cons:
            return None
        if len(cons) != 1:
            raise ModelFileError(
                f"{self.name}: tensor '{t}' feeds {len(cons)} nodes; qcert reads a single chain"
                + self.chain_hint
            )
        self.visited.add(cons[0])
        return self.idx.nodes[cons[0]]


class _QdqReader(ChainReader):
    """Walks a QDQ graph from its input along its single chain of tensors."""

    def __init__(self, model: onnx.ModelProto, meta: dict[str, Any] | None, name: str) -> None:
        super().__init__(model, name)
        self.header = meta["model"] if meta else None
        self.frac = 0

    # -------------------------------------------------------------- helpers
    def scale(self, t: str, n: onnx.NodeProto, what: str) -> int:
        """The fractional bits of a float32 power-of-two scale (other float types would make the
        graph compute in another precision)."""
        if t not in self.idx.consts:
            raise self.err(n, f"{what} must be a constant")
        if self.idx.consts[t].data_type != TensorProto.FLOAT:
            raise self.err(n, f"{what} must be float32")
        return _frac_of_scale(
            tensor_values(self.idx.consts[t]), f"{self.name} ({n.op_type}): {what}"
        )

    def zero_point(self, n: onnx.NodeProto, default_type: int) -> int:
        """Check the zero point is 0; return its element type (the codes' type)."""
        if len(n.input) < 3 or not n.input[2]:
            return default_type
        t = n.input[2]
        if t not in self.idx.consts:
            raise self.err(n, "the zero point must be a constant")
        if np.any(tensor_values(self.idx.consts[t]) != 0):
            raise self.err(n, "nonzero zero point; qcert formats are symmetric (zero point 0)")
        return self.idx.consts[t].data_type

    def codes_format(self, dtype: int, n: onnx.NodeProto, frac: int) -> FixedPointFormat:
        if dtype not in INT_TYPES:
            raise self.err(
                n, f"codes of type {helper.tensor_dtype_to_np_dtype(dtype)} are not supported"
            )
        bits, signed = INT_TYPES[dtype]
        try:
            return FixedPointFormat(bits, signed, frac)
        except FormatError as e:
            raise self.err(n, str(e)) from None

    def dq_const(self, t: str, n: onnx.NodeProto, what: str) -> tuple[np.ndarray, int, int]:
        """Integer codes, their element type and fractional bits: ``DequantizeLinear`` of a
        constant."""
        pi = self.prod.get(t)
        dq = self.idx.nodes[pi] if pi is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in self.idx.consts:
            raise self.err(n, f"{what} must be DequantizeLinear of a constant")
        if len(self.idx.consumers.get(t, [])) != 1:
            raise self.err(n, f"{what} is shared with another node")
        assert pi is not None
        self.visited.add(pi)
        codes = self.const(dq.input[0], dq, what).astype(np.int64)
        frac = self.scale(dq.input[1], dq, f"{what} scale")
        dtype = self.zero_point(dq, self.idx.consts[dq.input[0]].data_type)
        if dtype != self.idx.consts[dq.input[0]].data_type:
            raise self.err(dq, "zero point type differs from the codes' type")
        if dtype not in INT_TYPES:
            raise self.err(dq, f"codes of type {helper.tensor_dtype_to_np_dtype(dtype)}")
        return codes, dtype, frac

    def narrower(
        self, i: int, key: str, fmt: FixedPointFormat, values: np.ndarray
    ) -> FixedPointFormat:
        """The metadata's format of layer ``i`` where it agrees with the graph and holds the
        values (a narrower width than the stored type's)."""
        try:
            d = self.header["layers"][i][key] if self.header else None
            m = FixedPointFormat.from_dict(d) if d is not None else None
        except (KeyError, IndexError, TypeError, FormatError):
            return fmt
        if m is None or m.signed != fmt.signed or m.frac != fmt.frac or m.bits > fmt.bits:
            return fmt
        if values.size and (int(values.min()) < m.qmin or int(values.max()) > m.qmax):
            return fmt
        return m

    def bias_format(
        self, i: int, b: np.ndarray, dtype: int, frac: int, n: onnx.NodeProto
    ) -> tuple[np.ndarray, FixedPointFormat]:
        """The bias codes and format: the metadata's format when it holds the bias exactly (qcert
        writes biases at the accumulator's scale, the model's format may have fewer fractional
        bits), else the stored type at the fewest fractional bits (at most 32) that hold it."""
        try:
            d = self.header["layers"][i]["bias_format"] if self.header else None
            m = FixedPointFormat.from_dict(d) if d is not None else None
        except (KeyError, IndexError, TypeError, FormatError):
            m = None
        if m is not None and m.frac <= frac:
            k = frac - m.frac
            cand = b >> k
            if np.array_equal(cand << k, b) and (
                not cand.size or (int(cand.min()) >= m.qmin and int(cand.max()) <= m.qmax)
            ):
                return cand, m
        while frac > 32 and not np.any(b & 1):
            b, frac = b >> 1, frac - 1
        return b, self.codes_format(dtype, n, frac)

    def add(self, layer: QLayer, n: onnx.NodeProto) -> None:
        try:
            self.shape, self.frac = layer.bind(self.shape, self.frac)
        except FormatError as e:
            raise self.err(n, str(e)) from None
        self.layers.append(layer)

    # -------------------------------------------------------------- layers
    def affine(self, n: onnx.NodeProto, x: str) -> str:
        a = self.attrs(n)
        i = len(self.layers)
        is_conv = n.op_type == "Conv"
        if is_conv:
            if len(n.input) < 2:
                raise self.err(n, "Conv needs a weight")
            w, wdt, wfrac = self.dq_const(n.input[1], n, "the weight")
            if w.ndim != 4:
                raise self.err(n, "only 2-D convolutions are supported")
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise self.err(n, "grouped or dilated convolutions are not supported")
            auto_pad = a.get("auto_pad", b"NOTSET")
            if auto_pad not in (b"NOTSET", "NOTSET"):
                raise self.err(n, f"auto_pad {auto_pad!r} is not supported; give explicit pads")
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if len(pads) != 4 or pads[:2] != pads[2:]:
                raise self.err(n, f"pads {pads} are not symmetric")
            if list(a.get("kernel_shape", w.shape[2:])) != list(w.shape[2:]):
                raise self.err(n, "kernel_shape differs from the weight's shape")
            stride = tuple(a.get("strides", [1, 1]))
            bias_in = n.input[2] if len(n.input) > 2 and n.input[2] else None
        elif n.op_type == "Gemm":
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
                raise self.err(n, "only Gemm with alpha = beta = 1 and transA = 0 is supported")
            w, wdt, wfrac = self.dq_const(n.input[1], n, "the weight")
            if w.ndim != 2:
                raise self.err(n, "the weight must be a matrix")
            w = w if a.get("transB", 0) else w.T
            bias_in = n.input[2] if len(n.input) > 2 and n.input[2] else None
        else:  # MatMul, maybe followed by Add of a bias
            w, wdt, wfrac = self.dq_const(n.input[1], n, "the weight")
            if w.ndim != 2:
                raise self.err(n, "the weight must be a matrix")
            w = w.T
            bias_in = None
        wf = self.narrower(i, "weight_format", self.codes_format(wdt, n, wfrac), w)
        out = n.output[0]
        if n.op_type == "MatMul":
            cons = self.idx.consumers.get(out, [])
            if len(cons) == 1 and self.idx.nodes[cons[0]].op_type == "Add":
                add = self.idx.nodes[cons[0]]
                other = add.input[1] if add.input[0] == out else add.input[0]
                if (
                    other in self.prod
                    and self.idx.nodes[self.prod[other]].op_type == "DequantizeLinear"
                ):
                    self.visited.add(cons[0])
                    bias_in, out, n = other, add.output[0], add
        b, bf = None, None
        acc_frac = self.frac + wf.frac
        if bias_in is not None:
            codes, bdt, bfrac = self.dq_const(bias_in, n, "the bias")
            codes = codes.reshape(-1)
            if codes.shape[0] != w.shape[0]:
                raise self.err(n, f"bias of {codes.shape[0]} values for {w.shape[0]} outputs")
            if bfrac > acc_frac:
                raise self.err(
                    n, f"the bias has {bfrac} fractional bits, the accumulator {acc_frac}"
                )
            b, bf = self.bias_format(i, codes, bdt, bfrac, n)
        try:
            wt = torch.from_numpy(np.ascontiguousarray(w))
            bt = None if b is None else torch.from_numpy(b)
            if is_conv:
                layer: QLayer = QConv2d.from_int(wt, bt, wf, bf, stride, (pads[0], pads[1]))
            else:
                layer = QLinear.from_int(wt, bt, wf, bf)
        except FormatError as e:
            raise self.err(n, str(e)) from None
        self.add(layer, n)
        return out

    def requant(self, q: onnx.NodeProto, relu: bool) -> str:
        a = self.attrs(q)
        if a.get("block_size", 0):
            raise self.err(q, "blocked quantization is not supported")
        frac = self.scale(q.input[1], q, "the scale")
        dtype = self.zero_point(q, a.get("output_dtype", 0) or TensorProto.UINT8)
        fmt = self.codes_format(dtype, q, frac)
        if fmt.bits > 16:
            raise self.err(q, "requantization to more than 16 bits is not supported")
        if relu and fmt.signed:  # ReLU, then saturate to [0, 2**(b-1) - 1]: unsigned, one bit less
            fmt = FixedPointFormat(fmt.bits - 1, False, fmt.frac)
        self.add(QRequant(fmt, Rounding.HALF_EVEN), q)
        return q.output[0]

    # -------------------------------------------------------------- the walk
    def read(self) -> QNetwork:
        inp, out = graph_io(self.g, self.name)
        self._out = out.name
        dtype, self.shape = input_shape(inp, self.name)
        in_shape = self.shape
        meta_in = self.header.get("input", {}) if self.header else {}
        try:
            meta_fmt = (
                FixedPointFormat.from_dict(meta_in["format"]) if "format" in meta_in else None
            )
        except (TypeError, FormatError):
            meta_fmt = None
        cur = inp.name
        kind = "codes"  # "codes": integer tensor at self.frac; "real": float32 real values
        in_fmt: FixedPointFormat | None = None
        n = self.next_node(cur)
        if n is None:
            raise ModelFileError(f"{self.name}: the graph computes nothing")
        if dtype == TensorProto.FLOAT:
            # a float input quantized by the graph: the codes are the network's input
            if n.op_type != "QuantizeLinear":
                raise self.err(n, "a float input must first go through QuantizeLinear")
            frac = self.scale(n.input[1], n, "the scale")
            in_fmt = self.codes_format(self.zero_point(n, TensorProto.UINT8), n, frac)
            cur, n = n.output[0], self.next_node(n.output[0])
        elif dtype == TensorProto.INT64:  # qcert's own int64 input: Cast to float, Mul by the scale
            if n.op_type != "Cast" or self.attrs(n).get("to") != TensorProto.FLOAT:
                raise self.err(n, "an int64 input must be Cast to float first")
            mul = self.next_node(n.output[0])
            if mul is None or mul.op_type != "Mul":
                raise self.err(n, "the cast input must be multiplied by its scale")
            other = mul.input[1] if mul.input[0] == n.output[0] else mul.input[0]
            frac = self.scale(other, mul, "the scale")
            if meta_fmt is None or meta_fmt.frac != frac or meta_fmt.bits > 16:
                raise self.err(mul, "an int64 input needs its format in the qcert metadata")
            in_fmt, kind = meta_fmt, "real"
            cur, n = mul.output[0], self.next_node(mul.output[0])
        elif dtype in INT_TYPES:
            if n.op_type != "DequantizeLinear":
                raise self.err(n, "an integer input must first go through DequantizeLinear")
            frac = self.scale(n.input[1], n, "the scale")
            if self.zero_point(n, dtype) != dtype:
                raise self.err(n, "zero point type differs from the input type")
            in_fmt, kind = self.codes_format(dtype, n, frac), "real"
            cur, n = n.output[0], self.next_node(n.output[0])
        else:
            raise ModelFileError(
                f"{self.name}: input type {helper.tensor_dtype_to_np_dtype(dtype)} not supported"
            )
        if (
            meta_fmt is not None
            and meta_fmt.signed == in_fmt.signed
            and meta_fmt.frac == in_fmt.frac
            and meta_fmt.bits <= in_fmt.bits
        ):
            in_fmt = meta_fmt
        self.frac = in_fmt.frac
        relu = False
        while n is not None:
            op = n.op_type
            if relu and op != "QuantizeLinear":
                raise self.err(n, "Relu must be followed by QuantizeLinear")
            if op == "DequantizeLinear" and kind == "codes":
                frac = self.scale(n.input[1], n, "the scale")
                if frac != self.frac:
                    raise self.err(
                        n, "DequantizeLinear rescales (its scale differs from the codes')"
                    )
                self.zero_point(n, TensorProto.UINT8)
                cur, kind = n.output[0], "real"
            elif op == "QuantizeLinear" and kind == "real":
                cur, kind = self.requant(n, relu), "codes"
                relu = False
            elif op == "Relu" and kind == "real":
                relu, cur = True, n.output[0]
            elif op in ("Conv", "Gemm", "MatMul") and kind == "real" and n.input[0] == cur:
                cur = self.affine(n, cur)
            elif op == "AveragePool" and kind == "real":
                a = self.attrs(n)
                if (
                    any(a.get("pads", [0]))
                    or a.get("ceil_mode", 0)
                    or any(d != 1 for d in a.get("dilations", [1, 1]))
                    or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                ):
                    raise self.err(n, "only AveragePool without padding, dilation or ceil_mode")
                kernel = tuple(a["kernel_shape"])
                try:
                    self.add(QAvgPool2d(kernel, tuple(a.get("strides", [1, 1]))), n)
                except FormatError as e:
                    raise self.err(n, str(e)) from None
                cur = n.output[0]
            elif op == "Flatten":
                if self.attrs(n).get("axis", 1) != 1:
                    raise self.err(n, "only Flatten(axis=1) is supported")
                self.add(QFlatten(), n)
                cur = n.output[0]
            elif op == "Reshape":
                target = [int(v) for v in self.const(n.input[1], n, "the shape").reshape(-1)]
                d = math.prod(self.shape)
                if (
                    len(target) != 2
                    or target[1] not in (-1, d)
                    or target[0] not in (0, -1)
                    or (target == [-1, -1])
                ):
                    raise self.err(n, f"only a flattening Reshape (to N×{d}) is supported")
                self.add(QFlatten(), n)
                cur = n.output[0]
            elif op == "Identity":
                cur = n.output[0]
            elif op == "Mul" and kind == "real":
                other = n.input[1] if n.input[0] == cur else n.input[0]
                k = -self.scale(other, n, "the output scale")
                cast = self.next_node(n.output[0])
                if k != self.frac or cast is None or cast.op_type != "Cast":
                    raise self.err(n, "only Mul by 2**logit_frac followed by Cast (the output)")
                if self.attrs(cast).get("to") not in (TensorProto.INT64, TensorProto.INT32):
                    raise self.err(cast, "the output Cast must be to int64 or int32")
                cur, kind = cast.output[0], "codes"
            elif op == "Cast" and kind == "codes":
                if self.attrs(n).get("to") not in (TensorProto.INT64, TensorProto.INT32):
                    raise self.err(n, "codes may only be Cast to int64 or int32")
                cur = n.output[0]
            else:
                raise self.err(
                    n, f"operator {op} is not supported here; qcert imports QDQ graphs of {QDQ_OPS}"
                )
            n = self.next_node(cur)
        if cur != self._out:
            raise ModelFileError(f"{self.name}: the chain ends at '{cur}', not the graph output")
        unread = [m for k, m in enumerate(self.idx.nodes) if k not in self.visited]
        if unread:
            raise ModelFileError(
                f"{self.name}: {len(unread)} node(s) are not on the chain from input to output "
                f"(first: {unread[0].op_type} '{unread[0].name}')"
            )
        if not self.layers:
            raise ModelFileError(f"{self.name}: the graph has no layers")
        header = self.header or {}
        inp_meta = header.get("input", {}) if isinstance(header.get("input"), dict) else {}
        rng = inp_meta.get("range")
        in_range = (rng[0], rng[1]) if isinstance(rng, list) and len(rng) == 2 else None
        try:
            return QNetwork(
                self.layers,
                in_shape,
                in_fmt,
                in_range,
                header.get("classes") if isinstance(header.get("classes"), list) else None,
                header.get("meta") if isinstance(header.get("meta"), dict) else None,
            )
        except FormatError as e:
            raise ModelFileError(f"{self.name}: {e}") from None


def read_qdq(model: onnx.ModelProto, meta: dict[str, Any] | None, name: str) -> QNetwork:
    """The network a QDQ graph computes in exact arithmetic (see the module docstring)."""
    return _QdqReader(model, meta, name).read()
