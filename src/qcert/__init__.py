"""qcert: certifiably robust quantized neural networks, with guarantees about the integer network as it runs."""

from __future__ import annotations

__version__ = "0.1.0"

from qcert.errors import QcertError
from qcert.quant import FixedPointFormat, QNetwork, Rounding, from_float, load_model, save_model

__all__ = [
    "FixedPointFormat",
    "QNetwork",
    "QcertError",
    "Rounding",
    "from_float",
    "load_model",
    "save_model",
]
