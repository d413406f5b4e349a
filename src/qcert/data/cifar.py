"""CIFAR-10, "python version" (``cifar-10-batches-py``), read from a user directory.

Each batch file is a pickle of a dict with ``b"data"`` (``uint8`` N×3072: the red, green and blue
32×32 planes, row-major) and ``b"labels"`` (N ints in 0..9); ``batches.meta`` holds
``b"label_names"``. Pickles are read with :func:`qcert.data.safe_pickle.restricted_load`.
"""

from __future__ import annotations

import os
import reprlib
from pathlib import Path
from typing import Any

import numpy as np

from qcert.data.safe_pickle import restricted_load
from qcert.errors import DataError

__all__ = ["CIFAR10_CLASSES", "CIFAR_DIRNAME", "CIFAR_FILES", "load_cifar10_arrays"]

CIFAR_DIRNAME = "cifar-10-batches-py"
CIFAR_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
META_FILE = "batches.meta"
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
"""The standard class names, used when ``batches.meta`` is absent."""


def _resolve_dir(root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        raise DataError(
            f"cifar10: `root` is needed: the folder {CIFAR_DIRNAME} (holding data_batch_1..5, "
            "test_batch, batches.meta) or its parent"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"cifar10: root {path} is not a directory")
    if (path / CIFAR_DIRNAME).is_dir():
        return path / CIFAR_DIRNAME
    return path


def _get(d: dict[Any, Any], key: str, path: Path) -> Any:
    """Look up ``key`` as bytes (the original Python 2 pickles) or as str."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    keys = sorted(reprlib.repr(k) for k in d)[:20]  # reprlib: bounded, whatever the keys hold
    raise DataError(f"cifar10: {path} has no {key!r} entry (keys: {', '.join(keys)})")


def _unpickle_dict(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise DataError(f"cifar10: missing file {path}")
    try:
        with path.open("rb") as f:
            obj = restricted_load(f, source=str(path), encoding="bytes")
    except OSError as exc:
        raise DataError(f"cifar10: cannot read {path} ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"cifar10: {path} should hold a dict, found {type(obj).__name__}")
    return obj


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_dict(path)
    data = _get(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"cifar10: {path}: 'data' should be a uint8 N×3072 array, got {desc}")
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(f"cifar10: {path}: 'data' has {data.shape[1]} columns, expected 3072")
    raw_labels = _get(batch, "labels", path)
    try:
        labels = np.asarray(raw_labels)
    except Exception as exc:
        raise DataError(f"cifar10: {path}: 'labels' is not a list of ints ({exc})") from exc
    if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
        raise DataError(
            f"cifar10: {path}: expected {len(data)} integer labels, got {labels.dtype} "
            f"with shape {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"cifar10: {path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(directory: Path) -> list[str]:
    path = directory / META_FILE
    if not path.is_file():
        return list(CIFAR10_CLASSES)
    names = _get(_unpickle_dict(path), "label_names", path)
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"cifar10: {path}: 'label_names' should be a list of 10 names")
    out = []
    for nm in names:
        if isinstance(nm, bytes):
            nm = nm.decode("utf-8", errors="replace")
        if not isinstance(nm, str):
            raise DataError(f"cifar10: {path}: 'label_names' holds a {type(nm).__name__}")
        out.append(nm)
    return out


def load_cifar10_arrays(
    root: str | os.PathLike[str] | None, split: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a CIFAR-10 split from ``root``.

    Args:
        root: The ``cifar-10-batches-py`` folder or its parent.
        split: ``"train"`` (``data_batch_1``..``5``) or ``"test"`` (``test_batch``).

    Returns:
        ``uint8`` images ``N×3×32×32``, ``int64`` labels ``N`` and the class names.
    """
    directory = _resolve_dir(root)
    missing = [directory / f for f in CIFAR_FILES[split] if not (directory / f).is_file()]
    if missing:
        raise DataError(
            f"cifar10: missing file(s) {', '.join(str(m) for m in missing)} "
            f"(expected the {CIFAR_DIRNAME} folder or its parent as root)"
        )
    batches = [_read_batch(directory / f) for f in CIFAR_FILES[split]]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return images, labels, _class_names(directory)
