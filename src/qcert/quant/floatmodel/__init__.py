"""The float-model home: one layer set and walker (:mod:`.walker`), one float model with its file
format and input scale (:mod:`.model`), one architecture registry (:mod:`.archs`).

Why here, inside ``quant``: :func:`qcert.quant.from_float` converts float models, and ``quant``
imports nothing of qcert but ``errors``, so the walker it uses must live in ``quant``; the float
model, its file and the registry need nothing above ``quant`` either, and keeping them beside the
walker makes one home that every package above (bounds, attack, train, layerwise) uses.

>>> from qcert.quant.floatmodel import ARCHS, FloatModel, build_float, load_float, save_float
>>> model = FloatModel(build_float("cnn-small", (1, 28, 28), 10), (1, 28, 28))
>>> save_float(model, "float.safetensors")
"""

from __future__ import annotations

from qcert.quant.floatmodel.archs import ARCHS, DEFAULT_ARCH, ArchSpec, build_float, get_arch
from qcert.quant.floatmodel.model import (
    FLOAT_INPUT_SCALE,
    UNIT_INPUT_SCALE,
    FloatModel,
    describe,
    float_model_from_bytes,
    load_float,
    save_float,
)
from qcert.quant.floatmodel.walker import LAYER_SET, Step, leaves, plan

__all__ = [
    "ARCHS",
    "DEFAULT_ARCH",
    "FLOAT_INPUT_SCALE",
    "LAYER_SET",
    "UNIT_INPUT_SCALE",
    "ArchSpec",
    "FloatModel",
    "Step",
    "build_float",
    "describe",
    "float_model_from_bytes",
    "get_arch",
    "leaves",
    "load_float",
    "plan",
    "save_float",
]
