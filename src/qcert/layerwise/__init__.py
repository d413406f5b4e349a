"""Lipschitz-guided layer-wise quantization of adversarially trained float networks (qcert's own
design after arXiv 2110.12308; see docs/layerwise.md). This package only chooses quantizations:
float models and their file live in :mod:`qcert.quant.floatmodel`, PGD training in
:mod:`qcert.train.pgd`, the float PGD in :mod:`qcert.attack.pgd`.

>>> from qcert.layerwise import quantize
>>> from qcert.quant.floatmodel import load_float
>>> model = load_float("runs/pgd76/float.safetensors")
>>> net, result = quantize(model, calib_x, calib_y, "lipschitz", avg_bits=4, eps=76)
"""

from __future__ import annotations

from qcert.layerwise.build import quantize_with_formats
from qcert.layerwise.lipschitz import network_lipschitz, spectral_norm
from qcert.layerwise.metric import deviation_bound
from qcert.layerwise.search import STRATEGIES, SearchResult, allocate, quantize

__all__ = [
    "STRATEGIES",
    "SearchResult",
    "allocate",
    "quantize_with_formats",
    "deviation_bound",
    "network_lipschitz",
    "quantize",
    "spectral_norm",
]
