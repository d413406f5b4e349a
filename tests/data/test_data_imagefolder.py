"""Tests for the image-folder loader (Caltech-101 style), on tiny images written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qcert.data import imagefolder as imf
from qcert.data import load
from qcert.errors import DataError

Image = pytest.importorskip("PIL.Image")


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _make(root: Path) -> dict[str, np.ndarray]:
    """train/ and test/ with classes ``cat`` and ``ant`` (sorted: ant = 0, cat = 1)."""
    rng = np.random.default_rng(0)
    arrs = {}
    for split in ("train", "test"):
        for cls, count in (("cat", 2), ("ant", 1)):
            for i in range(count):
                a = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
                _write(root / split / cls / f"img{i}.png", a)
                arrs[f"{split}/{cls}/{i}"] = a
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    return arrs


def test_roundtrip_sorted_classes(tmp_path: Path) -> None:
    arrs = _make(tmp_path)
    ds = load("image-folder", "train", root=tmp_path, size=4)
    assert ds.classes == ["ant", "cat"]
    assert ds.images.shape == (3, 3, 4, 4) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 1, 1]
    # same size: no resampling, exact pixels, planes C×H×W
    assert np.array_equal(ds.images[0].numpy(), arrs["train/ant/0"].transpose(2, 0, 1))
    assert np.array_equal(ds.images[2].numpy(), arrs["train/cat/1"].transpose(2, 0, 1))
    assert len(load("image-folder", "test", root=tmp_path, size=(4, 4), n=2)) == 2


def test_resize_and_center_crop(tmp_path: Path) -> None:
    # 8 wide × 4 high: scaled by 1 to cover 4×4 and center-cropped to columns 2..5
    a = np.zeros((4, 8), dtype=np.uint8)
    a[:, 2:6] = 200
    _write(tmp_path / "test" / "only" / "wide.png", a)
    ds = load("image-folder", "test", root=tmp_path, size=(4, 4), channels=1)
    assert ds.images.shape == (1, 1, 4, 4)
    assert (ds.images == 200).all()
    # upscaled 2× to 8×16, then cropped to 6×6: the center columns stay 200
    rgb = load("image-folder", "test", root=tmp_path, size=6)
    assert rgb.images.shape == (1, 3, 6, 6)
    assert (rgb.images[0, :, :, 2:4] == 200).all()


def test_jpeg_and_grayscale_source(tmp_path: Path) -> None:
    a = np.full((10, 10), 77, dtype=np.uint8)
    _write(tmp_path / "test" / "a" / "x.JPG", a)
    ds = load("image-folder", "test", root=tmp_path, size=5)
    assert ds.images.shape == (1, 3, 5, 5)
    assert (ds.images.int() - 77).abs().max() <= 2  # JPEG on a flat image, RGB from L


def test_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make(tmp_path)
    with pytest.raises(DataError, match="target size .* is needed"):
        load("image-folder", "train", root=tmp_path)
    with pytest.raises(DataError, match="outside 1..4096"):
        load("image-folder", "train", root=tmp_path, size=100_000)
    with pytest.raises(DataError, match="channels"):
        load("image-folder", "train", root=tmp_path, size=4, channels=2)
    with pytest.raises(DataError, match="root"):
        load("image-folder", "train", size=4)
    with pytest.raises(DataError, match="missing folder"):
        load("image-folder", "train", root=tmp_path / "nowhere", size=4)
    monkeypatch.setattr(imf, "MAX_IMAGES", 2)
    with pytest.raises(DataError, match="more than 2 images"):
        load("image-folder", "train", root=tmp_path, size=4)
    monkeypatch.setattr(imf, "MAX_IMAGES", 100)
    monkeypatch.setattr(imf, "MAX_SOURCE_PIXELS", 15)
    with pytest.raises(DataError, match="at most 15 are read"):
        load("image-folder", "train", root=tmp_path, size=4)
    monkeypatch.setattr(imf, "MAX_SOURCE_PIXELS", 100)
    monkeypatch.setattr(imf, "MAX_BYTES", 100)
    with pytest.raises(DataError, match="exceed 100 bytes"):
        load("image-folder", "train", root=tmp_path, size=4)


def test_bad_files_and_class_mismatch(tmp_path: Path) -> None:
    _make(tmp_path)
    (tmp_path / "test" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load("image-folder", "test", root=tmp_path, size=4)
    (tmp_path / "test" / "cat" / "broken.png").unlink()
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(DataError, match="different class folders"):
        load("image-folder", "train", root=tmp_path, size=4)
    empty = tmp_path / "empty"
    (empty / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load("image-folder", "test", root=empty, size=4)


def test_pillow_missing_is_a_named_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    real = builtins.__import__

    def no_pil(name: str, *args: object, **kwargs: object) -> object:
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no PIL here")
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(DataError, match="needs Pillow"):
        load("image-folder", "test", root=tmp_path, size=4)
