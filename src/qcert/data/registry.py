"""The dataset registry and :func:`load`."""

from __future__ import annotations

import os

import numpy as np
import torch

from qcert.data.cifar import load_cifar10_arrays
from qcert.data.dataset import IntDataset
from qcert.data.digits import load_digits_arrays
from qcert.data.idx import load_idx_dataset
from qcert.data.imagefolder import load_image_folder_arrays
from qcert.data.mnist import load_mnist_arrays
from qcert.errors import DataError

__all__ = ["DATASETS", "SPLITS", "check_dataset", "load"]

DATASETS: tuple[str, ...] = (
    "mnist",
    "digits",
    "mnist-idx",
    "fashion-mnist",
    "cifar10",
    "image-folder",
)
"""Names accepted by :func:`load`."""

SPLITS: tuple[str, ...] = ("train", "test")

DIGIT_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def check_dataset(name: object) -> str:
    """``name`` if it is one of :data:`DATASETS`; :class:`DataError` otherwise."""
    if not isinstance(name, str) or name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return name


def load(
    name: str,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    n: int | None = None,
    size: tuple[int, int] | int | None = None,
    channels: int = 3,
) -> IntDataset:
    """Load a dataset split as integer tensors.

    Args:
        name: One of :data:`DATASETS`.
        split: ``"train"`` or ``"test"``.
        root: Directory with the files, required for ``mnist-idx``, ``fashion-mnist``,
            ``cifar10`` and ``image-folder``; ignored by ``mnist`` and ``digits`` (bundled with
            installed packages).
        n: Keep only the first ``n`` samples (all of them if the split is smaller).
        size: ``image-folder`` only (required there): the images' ``(H, W)`` after the resize
            and center crop (:mod:`qcert.data.imagefolder`).
        channels: ``image-folder`` only: 3 (RGB) or 1 (grayscale).

    Returns:
        An :class:`IntDataset` with ``uint8`` images ``N×C×H×W`` and ``int64`` labels.

    Raises:
        DataError: Unknown name or split, bad ``n``, missing ``root``, missing or corrupt files.
    """
    check_dataset(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; use 'train' or 'test'")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DataError(f"n must be a positive integer or None, got {n!r}")

    if name == "mnist":
        images, labels = load_mnist_arrays(split)
        classes = list(DIGIT_CLASSES)
    elif name == "digits":
        images, labels = load_digits_arrays(split)
        classes = list(DIGIT_CLASSES)
    elif name in ("mnist-idx", "fashion-mnist"):
        images, labels = load_idx_dataset(root, split, name)
        classes = list(FASHION_MNIST_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES)
    elif name == "cifar10":
        images, labels, classes = load_cifar10_arrays(root, split)
    else:
        images, labels, classes = load_image_folder_arrays(root, split, size, channels, n)

    if n is not None:
        images, labels = images[:n], labels[:n]
    # Copy: the arrays may be cached (mnist, digits) or read-only views of file bytes (idx).
    return IntDataset(
        images=torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)),
        labels=torch.from_numpy(np.array(labels, dtype=np.int64, copy=True)),
        classes=classes,
        name=name,
        split=split,
    )
