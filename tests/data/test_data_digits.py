"""Tests for the scikit-learn digits loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from qcert.data import load
from qcert.data.digits import DIGITS_LUT


@pytest.mark.parametrize(("split", "count"), [("train", 1437), ("test", 360)])
def test_digits_shapes_and_range(split: str, count: int) -> None:
    ds = load("digits", split)
    images, labels = ds
    assert images.shape == (count, 1, 8, 8) and images.dtype == torch.uint8
    assert labels.shape == (count,) and labels.dtype == torch.int64
    assert int(images.min()) == 0 and int(images.max()) == 255
    assert 0 <= int(labels.min()) and int(labels.max()) <= 9
    assert len(ds) == count


def test_digits_conversion_and_split_order() -> None:
    ref = load_digits()
    train, test = load("digits", "train"), load("digits", "test")
    images = torch.cat([train.images, test.images]).reshape(-1, 64).numpy()
    expected = np.array([[round(v * 255 / 16) for v in row] for row in ref.data], dtype=np.uint8)
    assert np.array_equal(images, expected)
    assert np.array_equal(torch.cat([train.labels, test.labels]).numpy(), ref.target)
    assert DIGITS_LUT[8] == 128 and DIGITS_LUT[16] == 255 and DIGITS_LUT[1] == 16
