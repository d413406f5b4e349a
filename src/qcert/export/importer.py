"""``from_onnx``: read an ONNX graph of the shapes qcert exports back into a QNetwork.

* **QDQ graphs** are read structurally and need no qcert metadata: ``DequantizeLinear`` of
  constant weights into ``Conv`` / ``Gemm`` / ``MatMul`` (+ ``Add`` of a dequantized bias),
  ``QuantizeLinear`` (optionally after ``Relu``) → ``DequantizeLinear`` as a half-even
  requantization, ``AveragePool``, ``Flatten`` / ``Reshape``. Every scale must be a power of two and
  every zero point 0 (per tensor). The imported network is the graph's exact-arithmetic meaning;
  where float32 may not compute it exactly (:func:`~qcert.export.qdq.qdq_problems`) the import
  raises, or warns with ``strict=False``. qcert metadata, when present, restores class names,
  the input range and narrower bit widths.
* **Integer graphs** carry their fixed-point formats in the ``qcert`` metadata (an integer graph
  has no scales). The importer reads every weight from the graph, then regenerates the graph of
  the network it read and requires it to match the actual graph node for node, constant for
  constant: an accepted graph computes exactly what the returned network computes.

* **onnxruntime int8 models** (``quantize_static``, QDQ or QOperator; recognised by QOperator
  operators or by scales that are not powers of two / nonzero zero points, without qcert metadata)
  are read as the integers onnxruntime's kernels compute (``import_ort``): offsets, affine layers,
  float32 rescales, max-pool, global sum pool. Accumulators that could leave int32 raise (or warn
  with ``strict=False``); weights for which onnxruntime's u8 × s8 kernels may saturate (AVX2
  without VNNI) warn.

The reading itself lives in ``onnx_io`` (the file and its metadata), ``import_integer``,
``import_qdq`` and ``import_ort``; this module chooses between them.
"""

from __future__ import annotations

import os
import warnings

from qcert.errors import FormatError, InexactExportWarning, ModelFileError
from qcert.export.exporter import METADATA_KEY
from qcert.export.import_integer import import_integer
from qcert.export.import_ort import is_ort_quantized, ort_problems, pair_saturation_cpu, read_ort
from qcert.export.import_qdq import read_qdq
from qcert.export.onnx_io import load_onnx, read_metadata
from qcert.export.qdq import qdq_problems
from qcert.quant import QNetwork

__all__ = ["from_onnx", "load_onnx"]


def from_onnx(path: str | os.PathLike[str], strict: bool = True) -> QNetwork:
    """Read a QDQ or integer ONNX graph of the shapes qcert exports, or an onnxruntime
    ``quantize_static`` int8 model, into a QNetwork.

    Raises :class:`ModelFileError` for a graph it cannot read (unknown operator, non-power-of-two
    scale, nonzero zero point, per-channel scales, a graph that differs from what its qcert
    metadata describes) and :class:`FormatError` for a QDQ graph whose float32 arithmetic is not
    provably exact (with ``strict=False``: an :class:`InexactExportWarning` instead).
    """
    name = os.fspath(path)
    model = load_onnx(path)
    meta = read_metadata(model, name)
    ops = {n.op_type for n in model.graph.node}
    if meta is None and is_ort_quantized(model):
        return _from_ort(model, name, strict)
    flavour = meta.get("flavour") if meta else None
    if flavour is None:
        flavour = "qdq" if ops & {"QuantizeLinear", "DequantizeLinear"} else "integer"
    if flavour == "integer":
        if meta is None:
            raise ModelFileError(
                f"{name}: an integer-only graph has no scales; qcert reads the fixed-point formats "
                f"from its '{METADATA_KEY}' metadata, which this model lacks"
            )
        return import_integer(model, meta, name)
    if flavour != "qdq":
        raise ModelFileError(f"{name}: unknown qcert ONNX flavour {flavour!r}")
    net = read_qdq(model, meta, name)
    problems = qdq_problems(net, requantization=False)
    if problems:
        msg = (
            f"{name}: the imported network is the graph's exact-arithmetic meaning, but float32 "
            "may not compute it exactly: " + "; ".join(problems)
        )
        if strict:
            raise FormatError(msg + " (import with strict=False to accept it)")
        warnings.warn(msg, InexactExportWarning, stacklevel=2)
    return net


def _from_ort(model: object, name: str, strict: bool) -> QNetwork:
    """An onnxruntime ``quantize_static`` model (QDQ or QOperator): see docs/export.md."""
    import onnx

    assert isinstance(model, onnx.ModelProto)
    net = read_ort(model, name)
    problems = ort_problems(net)
    if problems:
        msg = f"{name}: onnxruntime's int32 accumulators may overflow: " + "; ".join(problems)
        if strict:
            raise FormatError(msg + " (import with strict=False to accept it)")
        warnings.warn(msg, InexactExportWarning, stacklevel=3)
    sat = net.meta["onnxruntime"]["pair_saturation"]
    cpu = pair_saturation_cpu()
    net.meta["onnxruntime"]["pair_saturation_cpu"] = cpu
    if sat:
        here = {
            True: "this CPU has AVX2 without VNNI: it is affected",
            False: "this CPU is not affected",
            None: "whether this CPU is affected is unknown",
        }[cpu]
        warnings.warn(
            f"{name}: onnxruntime's uint8 x int8 kernels on x86 CPUs with AVX2 but no VNNI add "
            "pairs of products in saturating int16, so onnxruntime may differ from the exact "
            f"integers qcert certifies ({here}); {'; '.join(sat)}. "
            "Quantize with reduce_range=True (7-bit weights) to rule it out.",
            InexactExportWarning,
            stacklevel=3,
        )
    return net
