"""The activation quantizer: requantize an accumulator to the next tensor's format."""

from __future__ import annotations

from typing import Any

import torch

from qcert.errors import FormatError
from qcert.quant.format import FixedPointFormat, Rounding, fake_requantize, requantize
from qcert.quant.layers.base import QLayer, Shape

__all__ = ["QRequant"]


class QRequant(QLayer):
    """Activation quantizer: shift to ``format`` with ``rounding``, then saturate.

    An unsigned format makes this ReLU with saturation; a signed one saturates only.
    """

    kind = "requant"

    def __init__(self, format: FixedPointFormat, rounding: Rounding | str = Rounding.HALF_UP):
        super().__init__()
        if not 2 <= format.bits <= 16:
            raise FormatError(f"activation bit width {format.bits} out of range 2..16")
        self.format = format
        self.rounding = Rounding.parse(rounding)

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        return in_shape, self.format.frac

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        return fake_requantize(v, self.format, self.rounding)

    def integer(self, q: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        assert self.in_frac is not None, "layer is not bound to a network"
        return requantize(q, self.in_frac, self.format, self.rounding)

    def int_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.integer(lo), self.integer(hi)

    def config(self) -> dict[str, Any]:
        return {"type": self.kind, "format": self.format.to_dict(), "rounding": self.rounding.value}

    def extra_repr(self) -> str:
        return f"{self.format}, rounding={self.rounding.value}"
