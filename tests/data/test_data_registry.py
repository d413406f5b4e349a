"""Tests for :func:`qcert.data.load` argument checking and :class:`IntDataset`."""

from __future__ import annotations

import pytest
import torch

from qcert.data import DATASETS, IntDataset, load
from qcert.errors import DataError, QcertError


def test_datasets_tuple() -> None:
    assert isinstance(DATASETS, tuple)
    assert set(DATASETS) == {
        "mnist",
        "digits",
        "mnist-idx",
        "fashion-mnist",
        "cifar10",
        "image-folder",
    }


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*mnist.*cifar10"):
        load("imagenet")


def test_unknown_split() -> None:
    with pytest.raises(DataError, match="unknown split 'valid'.*train.*test"):
        load("digits", "valid")


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_n(n: object) -> None:
    with pytest.raises(DataError, match="n must be"):
        load("digits", n=n)  # type: ignore[arg-type]


def test_n_keeps_first_samples() -> None:
    full = load("digits", "test")
    part = load("digits", "test", n=7)
    assert len(part) == 7 and torch.equal(part.images, full.images[:7])
    assert len(load("digits", "test", n=10_000)) == len(full)


def test_intdataset_unpacks_and_validates() -> None:
    ds = IntDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    images, labels = ds
    assert images is ds.images and labels is ds.labels and len(ds) == 2
    assert "IntDataset" in repr(ds)
    with pytest.raises(DataError):
        IntDataset(torch.zeros(2, 1, 3, 3), torch.tensor([0, 1]))
    with pytest.raises(DataError):
        IntDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.tensor([0]))


def test_data_error_is_qcert_error() -> None:
    assert issubclass(DataError, QcertError)
