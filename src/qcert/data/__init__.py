"""Datasets as exact integer tensors (``uint8`` pixels, ``int64`` labels).

>>> from qcert.data import load
>>> images, labels = load("digits", "test")

See ``docs/data.md`` for the sources, pixel conversions, splits and the security checks.
"""

from __future__ import annotations

from qcert.data.dataset import IntDataset
from qcert.data.registry import DATASETS, load

__all__ = ["DATASETS", "IntDataset", "load"]
