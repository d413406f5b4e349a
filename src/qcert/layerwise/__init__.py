"""Lipschitz-guided layer-wise quantization of adversarially trained float networks (qcert's own
design after arXiv 2110.12308; see docs/layerwise.md).

>>> from qcert.layerwise import load_float, quantize
>>> model = load_float("runs/pgd76/float.safetensors")
>>> net, result = quantize(model, calib_x, calib_y, "lipschitz", avg_bits=4, eps=76)
"""

from __future__ import annotations

from qcert.layerwise.advtrain import pgd_float, train_pgd
from qcert.layerwise.build import quantize_with_formats
from qcert.layerwise.floatio import FloatModel, load_float, save_float
from qcert.layerwise.lipschitz import network_lipschitz, spectral_norm
from qcert.layerwise.metric import deviation_bound
from qcert.layerwise.search import STRATEGIES, SearchResult, allocate, quantize

__all__ = [
    "STRATEGIES",
    "FloatModel",
    "SearchResult",
    "allocate",
    "quantize_with_formats",
    "deviation_bound",
    "load_float",
    "network_lipschitz",
    "pgd_float",
    "quantize",
    "save_float",
    "spectral_norm",
    "train_pgd",
]
