"""MNIST-format IDX files (``mnist-idx``, ``fashion-mnist``) read from a user directory.

An IDX file is a big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim`` uint32 sizes, then
the data. We accept only unsigned-byte data (type ``0x08``): magic ``0x00000803`` for images
(N×H×W) and ``0x00000801`` for labels (N). Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np

from qcert.errors import DataError

__all__ = ["IDX_FILES", "find_idx_file", "load_idx_dataset", "read_idx"]

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""Per split: the standard (images, labels) file names; a ``.gz`` suffix is also accepted."""


def find_idx_file(root: Path, base: str, dataset: str) -> Path:
    """Return ``root/base`` or ``root/base.gz``, whichever exists (the raw file first)."""
    for cand in (root / base, root / f"{base}.gz"):
        if cand.is_file():
            return cand
    raise DataError(f"{dataset}: missing file {root / base} (or {base}.gz) in {root}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({exc})") from exc


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file, checking its magic number and size.

    Args:
        path: The file (gzip-compressed if its name ends in ``.gz``).
        magic: The expected magic number, e.g. ``0x00000803`` for a 3-d image file.

    Returns:
        A ``uint8`` array with the shape the header gives.

    Raises:
        DataError: On a bad magic number or a byte count that does not match the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no complete header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "oversized"
        raise DataError(
            f"{path}: {kind} IDX file: header says shape {dims} = {expected} bytes, "
            f"file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_dataset(
    root: str | os.PathLike[str] | None, split: str, dataset: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of an MNIST-format dataset from the IDX files in ``root``.

    Returns:
        ``uint8`` images ``N×1×H×W`` and ``int64`` labels ``N`` (checked to lie in 0..9).
    """
    images_name, labels_name = IDX_FILES[split]
    if root is None:
        raise DataError(
            f"{dataset}: `root` is needed: the directory holding {images_name} and "
            f"{labels_name} (optionally .gz)"
        )
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"{dataset}: root {root_path} is not a directory")
    images = read_idx(find_idx_file(root_path, images_name, dataset), IMAGES_MAGIC)
    labels = read_idx(find_idx_file(root_path, labels_name, dataset), LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{dataset}: {len(images)} images in {images_name} but {len(labels)} labels in "
            f"{labels_name} (in {root_path})"
        )
    if len(labels) and labels.max() > 9:
        raise DataError(f"{dataset}: labels in {labels_name} outside 0..9 (in {root_path})")
    return images[:, None, :, :], labels.astype(np.int64)
