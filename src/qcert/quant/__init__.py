"""Fixed-point formats, quantized layers, the QNetwork with its reference executor, the other
executors (chosen by :func:`make_executor`), conversion from float PyTorch, the ``.qnn`` model file,
the input validators and the fake-quant forward. Imports nothing of qcert but ``errors``."""

from __future__ import annotations

from qcert.quant.convert import from_float, to_float
from qcert.quant.executor import EXECUTORS, Executor, make_executor
from qcert.quant.fake_forward import FakeForward
from qcert.quant.format import (
    FixedPointFormat,
    Rounding,
    fake_requantize,
    requantize,
    round_shift,
)
from qcert.quant.inputs import check_box, check_eps, check_labels, check_levels, random_inputs
from qcert.quant.io import load_model, save_model
from qcert.quant.layers import (
    QAvgPool2d,
    QConv2d,
    QFlatten,
    QGlobalSumPool,
    QLayer,
    QLinear,
    QMaxPool2d,
    QOffset,
    QRequant,
    QRescale,
)
from qcert.quant.multiplier import (
    fixed_point_rescale,
    float32_rescale,
    ort_output_scale,
    quantize_linear,
    quantize_multiplier,
)
from qcert.quant.network import DEFAULT_INPUT_FORMAT, QNetwork, argmax_first

__all__ = [
    "DEFAULT_INPUT_FORMAT",
    "EXECUTORS",
    "Executor",
    "FakeForward",
    "FixedPointFormat",
    "QAvgPool2d",
    "QConv2d",
    "QFlatten",
    "QGlobalSumPool",
    "QLayer",
    "QLinear",
    "QMaxPool2d",
    "QNetwork",
    "QOffset",
    "QRequant",
    "QRescale",
    "Rounding",
    "argmax_first",
    "check_box",
    "check_eps",
    "check_labels",
    "check_levels",
    "fake_requantize",
    "fixed_point_rescale",
    "float32_rescale",
    "from_float",
    "load_model",
    "make_executor",
    "ort_output_scale",
    "quantize_linear",
    "quantize_multiplier",
    "random_inputs",
    "save_model",
    "to_float",
    "requantize",
    "round_shift",
]
