"""The base class of the quantized layers, and the input quantizer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from qcert.errors import FormatError
from qcert.quant.format import Rounding, round_float

__all__ = ["QLayer", "Shape", "input_quantize"]

Shape = tuple[int, ...]


def _pair(v: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        pair = (v, v)
    elif isinstance(v, tuple | list) and len(v) == 2:
        pair = (v[0], v[1])
    else:
        raise FormatError(f"{name} must be an int or a pair of ints, got {v!r}")
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in pair):
        raise FormatError(f"{name} must be integers, got {v!r}")
    return pair


class QLayer(nn.Module):
    """Base class of the quantized layers."""

    kind: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.in_frac: int | None = None
        self.out_frac: int | None = None
        self.in_shape: Shape | None = None
        self.out_shape: Shape | None = None
        self.in_mag: int | None = None

    def bind(self, in_shape: Shape, in_frac: int, in_mag: int | None = None) -> tuple[Shape, int]:
        """Fix the input's shape (without batch) and fractional bits; return the output's.

        ``in_mag`` bounds ``|input|`` for every input the network can receive (set by QNetwork); an
        affine layer uses it to prove when a float64 product is exact.
        """
        out_shape, out_frac = self._bind(tuple(in_shape), in_frac)
        self.in_mag = in_mag
        self.in_shape, self.in_frac = tuple(in_shape), in_frac
        self.out_shape, self.out_frac = out_shape, out_frac
        return out_shape, out_frac

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        raise NotImplementedError

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def integer(self, q: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        """Exact int64 output. ``arith_path`` matters only for affine layers (see ``_affine_int``)."""
        raise NotImplementedError

    def int_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The layer's entry in the model file's JSON header (without tensors)."""
        return {"type": self.kind}

    def int_tensors(self) -> dict[str, torch.Tensor]:
        """The integer tensors saved in the model file, by local name."""
        return {}

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.fake(v)


def input_quantize(x: torch.Tensor, lo: int, hi: int, ste: bool = True) -> torch.Tensor:
    """Integer input codes from a float tensor in input units: round half up and clip to
    ``[lo, hi]`` (identity on valid integer inputs; straight-through gradient for attacks)."""
    r = x + (round_float(x, Rounding.HALF_UP) - x).detach() if ste else round_float(x, "half_up")
    return torch.clamp(r, lo, hi)
