"""``to_onnx``: write a :class:`~qcert.quant.QNetwork` as an ONNX model whose onnxruntime logits
equal ``net.integer_forward`` bit for bit (docs/export.md).

The model carries the network's ``.qnn`` header (layers, formats, input range, class names) as the
metadata entry ``qcert``, which :func:`qcert.export.from_onnx` reads back.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any

import onnx
from onnx import TensorProto, helper

import qcert
from qcert.errors import FormatError, InexactExportWarning
from qcert.export.integer import INPUT_NAME, OUTPUT_NAME, build_integer
from qcert.export.qdq import build_qdq, qdq_opset, qdq_problems
from qcert.quant import QNetwork
from qcert.quant.files import write_atomic
from qcert.quant.io import header_of, tensors_of

FLAVOURS = ("integer", "qdq")
METADATA_KEY = "qcert"
ONNX_FORMAT_NAME = "qcert.onnx"
ONNX_FORMAT_VERSION = 1
INTEGER_OPSET = 13


def weights_sha256(net: QNetwork) -> str:
    """SHA-256 of the network's integer codes (every weight and bias, by name, as int64 values in
    C order with their shapes), whatever dtype stores them."""
    h = hashlib.sha256()
    for name, t in sorted(tensors_of(net).items()):
        h.update(f"{name}:{list(t.shape)}:".encode())
        h.update(t.astype("<i8").tobytes())
    return h.hexdigest()


def metadata_of(net: QNetwork, flavour: str) -> dict[str, Any]:
    """The ``qcert`` metadata entry; an integer graph's also records :func:`weights_sha256`,
    which the import checks, so that a weight edited in the graph is refused."""
    meta = {
        "format": ONNX_FORMAT_NAME,
        "version": ONNX_FORMAT_VERSION,
        "flavour": flavour,
        "model": header_of(net),
    }
    if flavour == "integer":
        meta["weights_sha256"] = weights_sha256(net)
    return meta


def onnx_model(
    net: QNetwork,
    flavour: str = "integer",
    *,
    int8_kernels: bool = True,
    strict: bool = True,
) -> onnx.ModelProto:
    """The ONNX model of ``net`` (checked with ``onnx.checker``).

    Args:
        flavour: ``"integer"`` (integer operators only; bit-exact for every network qcert accepts
            whose requantization shifts are at most 62 bits right / 46 bits left) or ``"qdq"``
            (QuantizeLinear/DequantizeLinear around float operators; bit-exact as written only
            under the conditions of :func:`qcert.export.qdq.qdq_problems`, and in backends that
            fuse it into uint8×int8 kernels under ``qdq_problems(net, fused_kernels=True)``).
        int8_kernels: integer flavour: use MatMulInteger/ConvInteger where provably exact
            (otherwise int64 MatMul everywhere).
        strict: QDQ flavour: raise :class:`FormatError` when the graph is not provably bit-exact;
            with False, warn (:class:`InexactExportWarning`) and write it anyway.
    """
    if flavour not in FLAVOURS:
        raise FormatError(
            f"unknown ONNX flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}"
        )
    if flavour == "integer":
        b, x = build_integer(net, int8_kernels)
        opset = INTEGER_OPSET
        doc = "qcert integer-only graph: logits equal QNetwork.integer_forward bit for bit."
    else:
        problems = qdq_problems(net)
        if problems and not strict:
            warnings.warn(
                "QDQ export is not bit-exact with the integer semantics: " + "; ".join(problems),
                InexactExportWarning,
                stacklevel=2,
            )
        b, x = build_qdq(net, strict)
        opset = qdq_opset(net)
        doc = (
            "qcert QDQ graph: logits equal QNetwork.integer_forward bit for bit."
            if not problems
            else "qcert QDQ graph, NOT bit-exact: " + "; ".join(problems)
        )
    graph = helper.make_graph(
        b.nodes,
        f"qcert_{flavour}",
        [helper.make_tensor_value_info(INPUT_NAME, x.dtype, ["N", *net.input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.INT64, ["N", net.num_classes])],
        initializer=list(b.inits.values()),
        doc_string=doc,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="qcert",
        producer_version=qcert.__version__,
        doc_string=doc,
    )
    model.ir_version = 8 if opset < 21 else 10
    helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata_of(net, flavour))})
    onnx.checker.check_model(model, full_check=True)
    return model


def to_onnx(
    net: QNetwork,
    path: str | os.PathLike[str],
    flavour: str = "integer",
    *,
    int8_kernels: bool = True,
    strict: bool = True,
) -> onnx.ModelProto:
    """Write ``net`` to ``path`` as ONNX (atomically) and return the model; see :func:`onnx_model`.

    The model's input ``input`` is N×(input shape), uint8 when the input format is unsigned with
    at most 8 bits, int64 otherwise; its output ``logits`` is int64 N×K in units of
    ``2**-net.logit_frac`` — the values of ``net.integer_forward``.
    """
    model = onnx_model(net, flavour, int8_kernels=int8_kernels, strict=strict)
    write_atomic(path, model.SerializeToString())
    return model
