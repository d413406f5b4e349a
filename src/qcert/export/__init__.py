"""ONNX export and import, bit-exact with the reference executor in onnxruntime (docs/export.md).

* :func:`to_onnx` writes the ``integer`` flavour (integer operators only) or the ``qdq`` flavour
  (QuantizeLinear/DequantizeLinear around float operators, bit-exact under stated conditions);
* :func:`from_onnx` reads either back into a :class:`~qcert.quant.QNetwork`;
* :func:`compare_onnx` runs a model in onnxruntime and counts logits equal to ``integer_forward``;
* :class:`OnnxExecutor` is the ``onnx`` executor, registered with
  :func:`qcert.quant.executor.make_executor` when this package is imported.
"""

from __future__ import annotations

from qcert.export.exporter import FLAVOURS, InexactExportWarning, onnx_model, to_onnx
from qcert.export.importer import from_onnx, load_onnx
from qcert.export.qdq import qdq_problems
from qcert.export.runtime import OnnxExecutor, compare_onnx, onnx_logits, session
from qcert.quant.executor import register_executor
from qcert.quant.inputs import random_inputs

# the one executor quant cannot build itself (it needs the ONNX builder above it)
register_executor("onnx", OnnxExecutor)

__all__ = [
    "FLAVOURS",
    "InexactExportWarning",
    "OnnxExecutor",
    "compare_onnx",
    "from_onnx",
    "load_onnx",
    "onnx_logits",
    "onnx_model",
    "qdq_problems",
    "random_inputs",
    "session",
    "to_onnx",
]
