"""Tests for the IDX (mnist-idx, fashion-mnist) loaders, on tiny files written here."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from qcert.data import load
from qcert.data.idx import read_idx
from qcert.errors import DataError

PREFIX = {"train": "train", "test": "t10k"}


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _make(
    root: Path, split: str = "test", n: int = 5, gz: bool = False, n_labels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n if n_labels is None else n_labels) % 10).astype(np.uint8)
    _write(root / f"{PREFIX[split]}-images-idx3-ubyte", _idx_bytes(images), gz)
    _write(root / f"{PREFIX[split]}-labels-idx1-ubyte", _idx_bytes(labels), gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist-idx", "fashion-mnist"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_roundtrip(tmp_path: Path, gz: bool, name: str, split: str) -> None:
    images, labels = _make(tmp_path, split=split, gz=gz)
    ds = load(name, split, root=tmp_path)
    assert ds.images.shape == (5, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert np.array_equal(ds.images[:, 0].numpy(), images)
    assert np.array_equal(ds.labels.numpy(), labels)
    assert ds.name == name and ds.split == split and len(ds.classes) == 10
    if name == "fashion-mnist":
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    else:
        assert ds.classes == [str(i) for i in range(10)]
    assert len(load(name, split, root=str(tmp_path), n=2)) == 2


def test_idx_root_required() -> None:
    with pytest.raises(DataError, match="root.*t10k-images-idx3-ubyte"):
        load("mnist-idx", "test")


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing file .*t10k-images-idx3-ubyte"):
        load("mnist-idx", "test", root=tmp_path)
    _make(tmp_path, split="test")
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing file .*t10k-labels-idx1-ubyte"):
        load("fashion-mnist", "test", root=tmp_path)


def test_idx_root_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load("mnist-idx", "test", root=tmp_path / "nope")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path: Path, gz: bool) -> None:
    images = np.zeros((5, 28, 28), np.uint8)
    path = _write(tmp_path / "img", _idx_bytes(images)[:-10], gz)
    with pytest.raises(DataError, match="truncated"):
        read_idx(path, 0x803)
    with pytest.raises(DataError, match="truncated"):
        read_idx(_write(tmp_path / "hdr", b"\x00\x00\x08\x03\x00", False), 0x803)


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    path = _write(tmp_path / "img", _idx_bytes(np.zeros((5, 28, 28), np.uint8)), True)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path, 0x803)


def test_idx_corrupt_deflate_stream(tmp_path: Path) -> None:
    """Issue 12 item 8: a corrupt deflate stream (not a truncated one) is the named DataError,
    not zlib.error; so is a bad gzip header and a bad CRC."""
    images = np.arange(5 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(5, 28, 28)
    path = _write(tmp_path / "img", _idx_bytes(images), True)
    good = path.read_bytes()
    for k, patch in [(20, b"\xff" * 8), (12, b"\x07\x07\x07"), (len(good) - 8, b"\x00\x01")]:
        path.write_bytes(good[:k] + patch + good[k + len(patch) :])
        with pytest.raises(DataError, match="cannot read"):
            read_idx(path, 0x803)
    path.write_bytes(b"\x1f\x8b" + b"\x00" * 30)  # gzip magic, then nonsense
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path, 0x803)


def test_idx_huge_header_is_refused_before_reading(tmp_path: Path) -> None:
    header = b"\x00\x00\x08\x03" + (65536).to_bytes(4, "big") * 3
    path = _write(tmp_path / "img", header + b"\x00" * 100, True)
    with pytest.raises(DataError, match="limit of 4294967296"):
        read_idx(path, 0x803)
    path = _write(tmp_path / "img2", _idx_bytes(np.zeros((5, 28, 28), np.uint8)) + b"x", False)
    with pytest.raises(DataError, match="oversized"):
        read_idx(path, 0x803)


def test_idx_bad_magic(tmp_path: Path) -> None:
    _make(tmp_path, split="train")
    labels = tmp_path / "train-labels-idx1-ubyte"
    images = tmp_path / "train-images-idx3-ubyte"
    labels.rename(tmp_path / "tmp")
    images.rename(labels)
    (tmp_path / "tmp").rename(images)  # swapped: the images file now holds labels
    with pytest.raises(DataError, match="bad IDX magic number 0x00000801, expected 0x00000803"):
        load("mnist-idx", "train", root=tmp_path)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    _make(tmp_path, n=5, n_labels=4)
    with pytest.raises(DataError, match="5 images .* 4 labels"):
        load("mnist-idx", "test", root=tmp_path)


def test_idx_labels_out_of_range(tmp_path: Path) -> None:
    _make(tmp_path)
    bad = np.array([0, 1, 2, 3, 10], np.uint8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(bad))
    with pytest.raises(DataError, match="outside 0..9"):
        load("mnist-idx", "test", root=tmp_path)
