"""MNIST-format IDX files (``mnist-idx``, ``fashion-mnist``) read from a user directory.

An IDX file is a big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim`` uint32 sizes, then
the data. We accept only unsigned-byte data (type ``0x08``): magic ``0x00000803`` for images
(N×H×W) and ``0x00000801`` for labels (N). Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import IO, cast

import numpy as np

from qcert.errors import DataError

__all__ = ["IDX_FILES", "find_idx_file", "load_idx_dataset", "read_idx"]

#: the largest IDX file read (its header's shape, in bytes): 4 GiB, 80 times MNIST's training images
MAX_IDX_BYTES = 1 << 32
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


def _read(f: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes of ``f`` (fewer only at its end)."""
    parts, left = [], n
    while left > 0:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file, checking its magic number and size.

    The header is read first and the data only up to the size it declares (plus one byte, to
    notice an oversized file), so a corrupt header or a gzip bomb never makes qcert read or
    decompress more than the array it describes.

    Args:
        path: The file (gzip-compressed if its name ends in ``.gz``).
        magic: The expected magic number, e.g. ``0x00000803`` for a 3-d image file.

    Returns:
        A ``uint8`` array with the shape the header gives.

    Raises:
        DataError: On a missing, unreadable or corrupt file (a bad gzip stream too), a bad magic
            number or a byte count that does not match the header.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            return _parse(path, cast(IO[bytes], f), magic)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc})") from None


def _parse(path: Path, f: IO[bytes], magic: int) -> np.ndarray:
    raw = _read(f, 4)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no complete header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    raw += _read(f, header - 4)
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if expected - header > MAX_IDX_BYTES:
        raise DataError(
            f"{path}: the IDX header declares shape {dims} = {expected - header} bytes, more than "
            f"the limit of {MAX_IDX_BYTES} (4 GiB)"
        )
    data = _read(f, expected - header + 1)
    if len(data) != expected - header:
        size = "truncated" if len(data) < expected - header else "oversized"
        have = f"{header + len(data)}" if size == "truncated" else "more"
        raise DataError(
            f"{path}: {size} IDX file: header says shape {dims} = {expected} bytes, file has {have}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


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
