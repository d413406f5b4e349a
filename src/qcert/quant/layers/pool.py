"""Layers that reshape or pool without weights: :class:`QFlatten`, :class:`QAvgPool2d`,
:class:`QMaxPool2d` and :class:`QGlobalSumPool`."""

from __future__ import annotations

import math
from typing import Any

import torch

from qcert.errors import FormatError
from qcert.quant.layers.base import QLayer, Shape, _pair

__all__ = ["QAvgPool2d", "QFlatten", "QGlobalSumPool", "QMaxPool2d"]


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


class QMaxPool2d(QLayer):
    """Max pooling (as ONNX ``MaxPool``): the largest value of each window; padded positions are
    ignored (they never win). Exact and monotone; no dilation, floor output size."""

    kind = "maxpool2d"

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise FormatError(
                f"maxpool2d kernel and stride must be ≥ 1 and padding ≥ 0, got {kernel_size}, "
                f"{stride}, {padding}"
            )
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise FormatError(
                f"maxpool2d padding {self.padding} must be at most half the kernel {self.kernel_size}"
            )

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        if len(in_shape) != 3:
            raise FormatError(f"maxpool2d expects input C×H×W, got shape {in_shape}")
        hw = [
            (size + 2 * p - k) // s + 1
            for size, k, s, p in zip(in_shape[1:], self.kernel_size, self.stride, self.padding)
        ]
        if min(hw) < 1:
            raise FormatError(f"maxpool2d kernel {self.kernel_size} larger than input {in_shape}")
        return (in_shape[0], hw[0], hw[1]), in_frac

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.max_pool2d(v, self.kernel_size, self.stride, self.padding)

    def integer(self, q: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if ph or pw:
            low = torch.iinfo(torch.int64).min
            q = torch.nn.functional.pad(q, (pw, pw, ph, ph), value=low)
        return q.unfold(2, kh, sh).unfold(3, kw, sw).amax(dim=(-1, -2))

    def int_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.integer(lo), self.integer(hi)

    def extra_repr(self) -> str:
        return f"k={self.kernel_size}, s={self.stride}, p={self.padding}"

    def config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
        }


class QGlobalSumPool(QLayer):
    """The sum of each channel over the whole image, C×H×W → C×1×1, exact (global average pooling
    is this sum followed by a :class:`~qcert.quant.layers.QRescale` whose multiplier includes the
    division by the area H·W, as onnxruntime's ``QLinearGlobalAveragePool`` computes it)."""

    kind = "global_sumpool"

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        if len(in_shape) != 3:
            raise FormatError(f"global_sumpool expects input C×H×W, got shape {in_shape}")
        self.area = in_shape[1] * in_shape[2]
        return (in_shape[0], 1, 1), in_frac

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        return v.sum(dim=(2, 3), keepdim=True)

    def integer(self, q: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        return q.sum(dim=(2, 3), keepdim=True)

    def int_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.integer(lo), self.integer(hi)
