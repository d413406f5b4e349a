"""Deployed-int8 requantization: :class:`QRescale` (an accumulator to codes with a zero point, by a
float32 multiplier as onnxruntime computes it, or by a gemmlowp fixed-point multiplier) and
:class:`QOffset` (subtract a zero point from codes before an affine layer or a pooling sum)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from qcert.errors import FormatError
from qcert.quant.format import FixedPointFormat
from qcert.quant.layers.base import QLayer, Shape
from qcert.quant.multiplier import (
    INT32_MAX,
    check_float32,
    fixed_point_rescale,
    float32_rescale,
)

__all__ = ["RESCALE_MODES", "QOffset", "QRescale"]

#: the requantization rules of :class:`QRescale`
RESCALE_MODES = ("float32", "fixed_point")


def _check_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise FormatError(f"{what} must be an integer, got {v!r}")
    return v


class QRescale(QLayer):
    """Requantize an integer accumulator to ``format``'s codes with a zero point.

    ``mode="float32"`` (onnxruntime): ``q = rne(clamp(fl32(fl32(acc)·M[c]), qmin−z, qmax−z)) + z``
    with float32 multipliers ``scale`` (one, or one per channel). ``mode="fixed_point"`` (gemmlowp):
    ``q = clamp(RDBPOT(SRDHM(acc, M0[c]), n[c]) + z, qmin, qmax)`` with ``multiplier`` ``M0[c]`` in
    ``[0, 2**31 − 1]`` and right ``shift`` ``n[c]`` in ``[0, 31]``. In both, ``acc`` is first
    saturated to int32 (see :mod:`qcert.quant.multiplier`). The multiplier applies to the
    accumulator's integer value, whatever its fractional bits; the output codes (zero point
    included) are held at ``format.frac`` fractional bits. Channel ``c`` is the first dimension of a
    sample (conv channels, linear features).
    """

    kind = "rescale"

    def __init__(
        self,
        format: FixedPointFormat,
        zero_point: int = 0,
        *,
        scale: Sequence[float] | None = None,
        multiplier: Sequence[int] | None = None,
        shift: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not 2 <= format.bits <= 16:
            raise FormatError(f"activation bit width {format.bits} out of range 2..16")
        self.format = format
        self.zero_point = _check_int(zero_point, "the zero point")
        if not format.qmin <= self.zero_point <= format.qmax:
            raise FormatError(
                f"zero point {zero_point} outside the format {format} [{format.qmin}, {format.qmax}]"
            )
        if (scale is None) == (multiplier is None and shift is None):
            raise FormatError("a rescale needs either scale (float32) or multiplier and shift")
        if scale is not None:
            self.mode = "float32"
            self.scale = check_float32(list(scale), "rescale scales")
            n = len(self.scale)
            # plain tensors, not buffers: ``net.double()`` must not change the float32 arithmetic
            self._m = torch.tensor(self.scale, dtype=torch.float32)
            real = [float(s) for s in self.scale]
        else:
            if multiplier is None or shift is None:
                raise FormatError("a fixed-point rescale needs both multiplier and shift")
            self.mode = "fixed_point"
            self.multiplier = [_check_int(m, "a multiplier") for m in multiplier]
            self.shift = [_check_int(s, "a shift") for s in shift]
            if len(self.multiplier) != len(self.shift):
                raise FormatError(
                    f"{len(self.multiplier)} multipliers but {len(self.shift)} shifts"
                )
            if any(not 0 <= m <= INT32_MAX for m in self.multiplier):
                raise FormatError("fixed-point multipliers must lie in [0, 2**31 - 1]")
            if any(not 0 <= s <= 31 for s in self.shift):
                raise FormatError("fixed-point shifts must lie in [0, 31] (right shifts)")
            n = len(self.multiplier)
            self._m = torch.tensor(self.multiplier, dtype=torch.int64)
            self._n = torch.tensor(self.shift, dtype=torch.int64)
            real = [m * 2.0 ** (-31 - s) for m, s in zip(self.multiplier, self.shift)]
        if n < 1:
            raise FormatError("a rescale needs at least one multiplier")
        self.channels = n
        self._real = torch.tensor(real, dtype=torch.float64)

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        if self.channels != 1 and (not in_shape or in_shape[0] != self.channels):
            raise FormatError(
                f"{self.channels} per-channel multipliers for an input of shape {in_shape}"
            )
        return in_shape, self.format.frac

    def _view(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.view(1, -1, *([1] * (ndim - 2))) if self.channels > 1 else t.view(-1)[:1]

    def _rescale(self, acc: torch.Tensor, z: int, lo: int, hi: int) -> torch.Tensor:
        if self.mode == "float32":
            return float32_rescale(acc, self._view(self._m, acc.dim()), z, lo, hi)
        m, n = self._view(self._m, acc.dim()), self._view(self._n, acc.dim())
        return fixed_point_rescale(acc, m, n, z, lo, hi)

    def integer(self, q: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        return self._rescale(q, self.zero_point, self.format.qmin, self.format.qmax)

    def int_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # monotone non-decreasing in the accumulator (multipliers are non-negative)
        return self.integer(lo), self.integer(hi)

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        """The integer result on the rounded accumulator ``v · 2**in_frac`` (so bit-exact wherever
        that accumulator is exact in ``v``'s dtype), with the clipped straight-through gradient of
        ``acc · M``: identity times ``M`` where the code lies inside the format, zero where it
        saturates."""
        assert self.in_frac is not None, "layer is not bound to a network"
        acc = v * (2.0**self.in_frac)
        z, fmt = self.zero_point, self.format
        lo, hi = fmt.qmin - z, fmt.qmax - z
        with torch.no_grad():
            a = torch.round(acc.detach()).clamp(-(2.0**62), 2.0**62).to(torch.int64)
            r = self._rescale(a, 0, lo - 1, hi + 1)  # centred, one step beyond the range
            inside = (r >= lo) & (r <= hi)
            exact = r.clamp(lo, hi).to(v.dtype)
        lin = acc * self._view(self._real, acc.dim()).to(v.dtype)
        out = lin + (exact - lin).detach()
        out = torch.where(inside, out, out.detach())
        return (out + z) * (2.0**-fmt.frac)

    def config(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.kind,
            "format": self.format.to_dict(),
            "zero_point": self.zero_point,
            "mode": self.mode,
        }
        if self.mode == "float32":
            d["scale"] = list(self.scale)
        else:
            d["multiplier"] = list(self.multiplier)
            d["shift"] = list(self.shift)
        return d

    def extra_repr(self) -> str:
        per = "per channel" if self.channels > 1 else "per tensor"
        return f"{self.format}, zero point {self.zero_point}, {self.mode} {per}"


class QOffset(QLayer):
    """``x − zero_point``: codes with a zero point to the centred integers an affine layer or a
    pooling sum takes (so padding with 0 pads with the zero point's real 0)."""

    kind = "offset"

    def __init__(self, zero_point: int) -> None:
        super().__init__()
        self.zero_point = _check_int(zero_point, "the zero point")
        if abs(self.zero_point) >= 1 << 31:
            raise FormatError(f"zero point {zero_point} out of range (|z| < 2**31)")

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        return in_shape, in_frac

    def integer(self, q: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        return q - self.zero_point

    def int_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lo - self.zero_point, hi - self.zero_point

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        assert self.in_frac is not None, "layer is not bound to a network"
        return v - self.zero_point * 2.0**-self.in_frac

    def config(self) -> dict[str, Any]:
        return {"type": self.kind, "zero_point": self.zero_point}

    def extra_repr(self) -> str:
        return f"− {self.zero_point}"
