"""The :class:`IntDataset` container: a dataset as integer tensors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from qcert.errors import DataError

__all__ = ["IntDataset"]


@dataclass(eq=False)
class IntDataset:
    """A labelled image dataset with exact integer pixels.

    Attributes:
        images: ``uint8`` tensor of shape ``N×C×H×W`` (pixel values 0..255).
        labels: ``int64`` tensor of shape ``N`` (indices into ``classes``).
        classes: Class names; ``classes[k]`` names label ``k``.
        name: Dataset name as passed to :func:`qcert.data.load`.
        split: ``"train"`` or ``"test"``.

    ``images, labels = ds`` unpacks the two tensors and ``len(ds)`` is ``N``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)
    name: str = ""
    split: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or not isinstance(self.labels, torch.Tensor):
            raise DataError("IntDataset: images and labels must be torch tensors")
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"IntDataset: images must be a uint8 N×C×H×W tensor, got "
                f"{self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(
                f"IntDataset: labels must be an int64 vector, got "
                f"{self.labels.dtype} with shape {tuple(self.labels.shape)}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"IntDataset: {self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.images
        yield self.labels

    def __repr__(self) -> str:
        return (
            f"IntDataset(name={self.name!r}, split={self.split!r}, "
            f"images={tuple(self.images.shape)} {self.images.dtype}, "
            f"labels={tuple(self.labels.shape)} {self.labels.dtype}, classes={len(self.classes)})"
        )
