"""scikit-learn's bundled 8×8 digits, rescaled from 0..16 to 0..255."""

from __future__ import annotations

import functools

import numpy as np

from qcert.errors import DataError

__all__ = ["DIGITS_LUT", "load_digits_arrays"]

N_TRAIN = 1437
"""The first 1,437 samples form ``train``; the last 360 (20%) form ``test``."""
N_TOTAL = 1797

DIGITS_LUT = np.array([round(v * 255 / 16) for v in range(17)], dtype=np.uint8)
"""Pixel map ``v -> round(v*255/16)`` (Python ``round``: the one tie, 127.5 at v=8, gives 128)."""


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(f"digits: scikit-learn is not installed ({exc})") from exc
    bunch = load_digits()
    data = np.asarray(bunch.data)
    target = np.asarray(bunch.target)
    if data.shape != (N_TOTAL, 64) or target.shape != (N_TOTAL,):
        raise DataError(
            f"digits: expected {N_TOTAL}×64 data, got {data.shape} data and {target.shape} targets"
        )
    ints = data.astype(np.int64)
    if not np.array_equal(ints, data) or ints.min() < 0 or ints.max() > 16:
        raise DataError("digits: pixel values are not integers in 0..16")
    images = DIGITS_LUT[ints].reshape(N_TOTAL, 1, 8, 8)
    return images, target.astype(np.int64)


def load_digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return cached ``(images, labels)`` for ``split`` (``uint8`` N×1×8×8, ``int64`` N)."""
    images, labels = _all_digits()
    sl = slice(0, N_TRAIN) if split == "train" else slice(N_TRAIN, N_TOTAL)
    return images[sl], labels[sl]
