"""Quantized layers. Each has two executions of one semantics:

* ``integer(q)``: the reference, exact int64 arithmetic on integer codes;
* ``fake(v)``: the float simulation on real values ``q * 2**-frac`` (differentiable, clipped STE),
  bit-exact with ``integer`` when run in float64 on networks whose accumulators stay below 2**53;

plus ``int_bounds(lo, hi)``: exact elementwise int64 interval propagation (the QA-IBP step that
applies each monotone operation to both bounds). A layer is *bound* by its :class:`QNetwork`, which
tells it the fractional bits of its input.

Files: ``base`` (:class:`QLayer`, the input quantizer), ``affine`` (:class:`QLinear`,
:class:`QConv2d`), ``requant`` (:class:`QRequant`), ``rescale`` (:class:`QRescale`, :class:`QOffset`: deployed
int8 requantization with zero points), ``pool`` (:class:`QFlatten`, :class:`QAvgPool2d`,
:class:`QMaxPool2d`, :class:`QGlobalSumPool`).
"""

from __future__ import annotations

from qcert.quant.layers.affine import QConv2d, QLinear, _Affine, quantize_weight
from qcert.quant.layers.base import QLayer, Shape, input_quantize
from qcert.quant.layers.pool import QAvgPool2d, QFlatten, QGlobalSumPool, QMaxPool2d
from qcert.quant.layers.requant import QRequant
from qcert.quant.layers.rescale import RESCALE_MODES, QOffset, QRescale

__all__ = [
    "QAvgPool2d",
    "QConv2d",
    "QFlatten",
    "QGlobalSumPool",
    "QLayer",
    "QLinear",
    "QMaxPool2d",
    "QOffset",
    "QRequant",
    "QRescale",
    "RESCALE_MODES",
    "Shape",
    "_Affine",
    "input_quantize",
    "quantize_weight",
]
