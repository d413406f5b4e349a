"""Tests for the CIFAR-10 loader, on tiny fake batches written here."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from qcert.data import load
from qcert.data.cifar import CIFAR10_CLASSES, CIFAR_FILES
from qcert.errors import DataError

PER_BATCH = 4


def _batch(seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake batch",
        b"data": rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, size=PER_BATCH)],
        b"filenames": [b"x.png"] * PER_BATCH,
    }


def _make(directory: Path, meta: bool = True) -> dict[str, list[dict[bytes, object]]]:
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[dict[bytes, object]]] = {}
    for split, files in CIFAR_FILES.items():
        written[split] = []
        for i, fname in enumerate(files):
            batch = _batch(seed=100 * len(split) + i)
            (directory / fname).write_bytes(pickle.dumps(batch, protocol=4))
            written[split].append(batch)
    if meta:
        names = [f"class{i}".encode() for i in range(10)]
        meta_obj = {b"label_names": names, b"num_cases_per_batch": PER_BATCH}
        (directory / "batches.meta").write_bytes(pickle.dumps(meta_obj, protocol=4))
    return written


@pytest.mark.parametrize("parent", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_roundtrip(tmp_path: Path, parent: bool, split: str) -> None:
    written = _make(tmp_path / "cifar-10-batches-py")
    root = tmp_path if parent else tmp_path / "cifar-10-batches-py"
    ds = load("cifar10", split, root=root)
    n = PER_BATCH * len(CIFAR_FILES[split])
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    data = np.concatenate([b[b"data"] for b in written[split]])
    labels = sum((b[b"labels"] for b in written[split]), [])
    assert np.array_equal(ds.images.reshape(n, -1).numpy(), data)
    # channel planes: the first 1024 bytes are red, row-major
    assert np.array_equal(ds.images[0, 0].numpy(), data[0, :1024].reshape(32, 32))
    assert ds.labels.tolist() == labels
    assert ds.classes == [f"class{i}" for i in range(10)]
    assert len(load("cifar10", split, root=root, n=3)) == 3


def test_cifar_default_class_names_without_meta(tmp_path: Path) -> None:
    _make(tmp_path, meta=False)
    assert load("cifar10", "test", root=tmp_path).classes == CIFAR10_CLASSES


def test_cifar_root_required() -> None:
    with pytest.raises(DataError, match="root.*cifar-10-batches-py"):
        load("cifar10", "test")


def test_cifar_missing_batch(tmp_path: Path) -> None:
    _make(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing file.*data_batch_3"):
        load("cifar10", "train", root=tmp_path)
    assert len(load("cifar10", "test", root=tmp_path)) == PER_BATCH


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle(tmp_path: Path) -> None:
    _make(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(marker)]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load("cifar10", "test", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({b"labels": [0]}, "no 'data' entry"),
        ({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, "3072"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 integer labels"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}, "outside 0..9"),
        ([1, 2, 3], "should hold a dict"),
    ],
)
def test_cifar_malformed_batch(tmp_path: Path, batch: object, match: str) -> None:
    _make(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DataError, match=match):
        load("cifar10", "test", root=tmp_path)


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    _make(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt"):
        load("cifar10", "test", root=tmp_path)
