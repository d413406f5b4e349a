"""Layers that reshape or pool without weights: :class:`QFlatten` and :class:`QAvgPool2d`."""

from __future__ import annotations

import math
from typing import Any

import torch

from qcert.errors import FormatError
from qcert.quant.layers.base import QLayer, Shape, _pair

__all__ = ["QAvgPool2d", "QFlatten"]


class QFlatten(QLayer):
    """Flattens C×H×W to one dimension (row-major, as ``torch.flatten``)."""

    kind = "flatten"

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        return (math.prod(in_shape),), in_frac

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        return v.flatten(1)

    def integer(self, q: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        return q.flatten(1)

    def int_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lo.flatten(1), hi.flatten(1)


class QAvgPool2d(QLayer):
    """Average pooling over windows whose area is a power of two ``2**p``: exact, as a window sum
    held with ``p`` more fractional bits. No padding."""

    kind = "avgpool2d"

    def __init__(
        self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        area = self.kernel_size[0] * self.kernel_size[1]
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise FormatError(f"avgpool2d kernel and stride must be ≥ 1, got {kernel_size}")
        if area & (area - 1):
            raise FormatError(
                f"avgpool2d kernel {self.kernel_size} has area {area}, not a power of two; "
                "integer average pooling is exact only for power-of-two window areas"
            )
        self.shift = area.bit_length() - 1

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        if len(in_shape) != 3:
            raise FormatError(f"avgpool2d expects input C×H×W, got shape {in_shape}")
        hw = [
            (size - k) // s + 1 for size, k, s in zip(in_shape[1:], self.kernel_size, self.stride)
        ]
        if min(hw) < 1:
            raise FormatError(f"avgpool2d kernel {self.kernel_size} larger than input {in_shape}")
        return (in_shape[0], hw[0], hw[1]), in_frac + self.shift

    def _window_sum(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return x.unfold(2, kh, sh).unfold(3, kw, sw).sum(dim=(-1, -2))

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        return self._window_sum(v) * (2.0**-self.shift)

    def integer(self, q: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        return self._window_sum(q)

    def int_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._window_sum(lo), self._window_sum(hi)

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}, s={self.stride}"

    def config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
        }
