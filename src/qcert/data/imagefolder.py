"""An image-folder dataset (``image-folder``, Caltech-101 style), read from a user directory.

Layout: ``root/<split>/<class name>/<image>`` with ``<split>`` ``train`` or ``test``; the classes
are the split folder's subfolders sorted by name (label ``i`` is the ``i``-th), and both splits
must hold the same class folders when both exist. Images are the files ending ``.png``, ``.jpg``,
``.jpeg`` or ``.bmp`` (any case), read in name order; other files and names starting with ``.``
are skipped. Each image is decoded with Pillow, converted to RGB (3 channels) or grayscale (1),
resized so that its shorter side is the target's (bilinear, aspect ratio kept) and center-cropped
to the target ``H×W``: the usual ``Resize`` + ``CenterCrop`` of image-classification pipelines.

Bounds, each refused with a :class:`~qcert.errors.DataError` naming it: at most
:data:`MAX_IMAGES` images per split, :data:`MAX_CLASSES` classes, :data:`MAX_SOURCE_PIXELS` pixels
per source image (checked from the file's header before decoding), a target side of at most
:data:`MAX_SIDE`, and at most :data:`MAX_BYTES` bytes for the decoded split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from qcert.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_BYTES",
    "MAX_CLASSES",
    "MAX_IMAGES",
    "MAX_SIDE",
    "MAX_SOURCE_PIXELS",
    "load_image_folder_arrays",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: the most images read per split (Caltech-101 has 9,146; ImageNet's training set 1.28 million)
MAX_IMAGES = 2_000_000
#: the most classes (folders) per split
MAX_CLASSES = 100_000
#: the most pixels of one source image (Pillow's own decompression-bomb limit is about 89 million)
MAX_SOURCE_PIXELS = 64_000_000
#: the largest target height or width
MAX_SIDE = 4096
#: the largest decoded split, N·C·H·W bytes (16 GiB)
MAX_BYTES = 1 << 34

_NAME = "image-folder"


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError(
            f"{_NAME}: reading images needs Pillow, which is not installed (pip install pillow)"
        ) from exc
    return Image


def _target(size: tuple[int, int] | int | None, channels: int) -> tuple[int, int]:
    if size is None:
        raise DataError(f"{_NAME}: a target size H×W is needed (the model's input size)")
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise DataError(f"{_NAME}: size must be an int or a pair of ints, got {size!r}")
    if not all(1 <= v <= MAX_SIDE for v in pair):
        raise DataError(f"{_NAME}: target size {pair} outside 1..{MAX_SIDE}")
    if channels not in (1, 3):
        raise DataError(f"{_NAME}: channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return pair[0], pair[1]


def _subfolders(folder: Path) -> list[str]:
    names = []
    with os.scandir(folder) as it:
        for entry in it:
            if not entry.name.startswith(".") and entry.is_dir():
                names.append(entry.name)
                if len(names) > MAX_CLASSES:
                    raise DataError(f"{_NAME}: {folder} has more than {MAX_CLASSES} class folders")
    return sorted(names)


def _images(folder: Path, count: int) -> list[Path]:
    """The image files of one class folder, in name order (``count``: images found so far)."""
    out = []
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if not entry.is_file():
                continue
            out.append(name)
            if count + len(out) > MAX_IMAGES:
                raise DataError(f"{_NAME}: more than {MAX_IMAGES} images in {folder.parent}")
    return [folder / n for n in sorted(out)]


def _resize_crop(img: Any, image_mod: Any, h: int, w: int) -> Any:
    """Resize so that the image covers ``h×w`` with its aspect ratio kept, then center-crop."""
    sw, sh = img.size
    scale = max(h / sh, w / sw)
    nw, nh = max(w, round(sw * scale)), max(h, round(sh * scale))
    if (nw, nh) != (sw, sh):
        img = img.resize((nw, nh), image_mod.Resampling.BILINEAR)
    left, top = (nw - w) // 2, (nh - h) // 2
    return img.crop((left, top, left + w, top + h))


def _read(path: Path, image_mod: Any, h: int, w: int, mode: str) -> np.ndarray:
    try:
        with image_mod.open(path) as img:
            sw, sh = img.size
            if sw < 1 or sh < 1 or sw * sh > MAX_SOURCE_PIXELS:
                raise DataError(
                    f"{_NAME}: {path} is {sw}×{sh} pixels; at most {MAX_SOURCE_PIXELS} are read"
                )
            img = _resize_crop(img.convert(mode), image_mod, h, w)
            arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, image_mod.DecompressionBombError) as exc:
        raise DataError(f"{_NAME}: cannot read image {path} ({exc})") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder_arrays(
    root: str | os.PathLike[str] | None,
    split: str,
    size: tuple[int, int] | int | None,
    channels: int = 3,
    n: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a split of an image folder.

    Args:
        root: The folder holding ``train/`` and ``test/``.
        split: ``"train"`` or ``"test"``.
        size: The target ``(H, W)`` (or one side for both).
        channels: 3 (RGB) or 1 (grayscale).
        n: Read only the first ``n`` images (in class order, then name order).

    Returns:
        ``uint8`` images ``N×C×H×W``, ``int64`` labels ``N`` and the class names.
    """
    h, w = _target(size, channels)
    image_mod = _pillow()
    if root is None:
        raise DataError(f"{_NAME}: `root` is needed: a folder with train/ and test/ subfolders")
    base = Path(root).expanduser()
    folder = base / split
    if not folder.is_dir():
        raise DataError(
            f"{_NAME}: missing folder {folder} (expected {base}/{split}/<class name>/<images>)"
        )
    try:
        classes = _subfolders(folder)
        other = base / ("test" if split == "train" else "train")
        if other.is_dir() and _subfolders(other) != classes:
            raise DataError(f"{_NAME}: {folder} and {other} hold different class folders")
        if not classes:
            raise DataError(f"{_NAME}: {folder} has no class folders")
        files: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            files += [(p, label) for p in _images(folder / name, len(files))]
    except OSError as exc:
        raise DataError(f"{_NAME}: cannot list {folder} ({exc})") from exc
    if not files:
        raise DataError(f"{_NAME}: no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    if n is not None:
        files = files[:n]
    if len(files) * channels * h * w > MAX_BYTES:
        raise DataError(
            f"{_NAME}: {len(files)} images of {channels}×{h}×{w} exceed {MAX_BYTES} bytes"
        )
    mode = "RGB" if channels == 3 else "L"
    images = np.empty((len(files), channels, h, w), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = _read(path, image_mod, h, w, mode)
    labels = np.array([label for _, label in files], dtype=np.int64)
    return images, labels, classes
