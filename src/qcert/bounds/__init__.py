"""Interval bounds: exact QA-IBP on integer boxes (``exact``), training-mode bounds and float IBP."""

from __future__ import annotations

from qcert.bounds.exact import (
    certified_accuracy,
    certify_boxes,
    eps_box,
    margin_lower_bounds,
    required_margin,
)

__all__ = [
    "certified_accuracy",
    "certify_boxes",
    "eps_box",
    "margin_lower_bounds",
    "required_margin",
]
