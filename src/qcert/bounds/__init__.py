"""Interval bounds: exact QA-IBP on integer boxes (``exact``), training-mode bounds and float IBP."""

from __future__ import annotations

from qcert.bounds.exact import (
    certified_accuracy,
    certify_boxes,
    eps_box,
    margin_lower_bounds,
    required_margin,
)
from qcert.bounds.ibp import (
    IBPBounds,
    float_ibp_bounds,
    float_ibp_certified,
    qaibp_bounds,
    qaibp_interval_bounds,
)

__all__ = [
    "IBPBounds",
    "float_ibp_bounds",
    "float_ibp_certified",
    "qaibp_bounds",
    "qaibp_interval_bounds",
    "certified_accuracy",
    "certify_boxes",
    "eps_box",
    "margin_lower_bounds",
    "required_margin",
]
