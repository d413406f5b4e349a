"""The affine layers: :class:`QLinear` and :class:`QConv2d` (integer weights and biases, an exact
int64 accumulator, a float64 product where a static bound proves it exact)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcert.errors import FormatError
from qcert.quant.format import FixedPointFormat
from qcert.quant.layers.base import QLayer, Shape, _pair

__all__ = ["QConv2d", "QLinear", "quantize_weight"]


def quantize_weight(w: torch.Tensor, fmt: FixedPointFormat, ste: bool = False) -> torch.Tensor:
    """Integer codes (as floats) of real weights: round half to even, then saturate.

    With ``ste=True`` the result carries the clipped straight-through gradient.
    """
    y = w * (2.0**fmt.frac)
    r = y + (torch.round(y) - y).detach() if ste else torch.round(y)
    return torch.clamp(r, fmt.qmin, fmt.qmax)


class _Affine(QLayer):
    """Shared part of :class:`QLinear` and :class:`QConv2d`: ``acc = W q + (b << shift)``."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_format: FixedPointFormat,
        bias_format: FixedPointFormat | None,
    ) -> None:
        super().__init__()
        if (bias is None) != (bias_format is None):
            raise FormatError("a bias needs a bias format and a bias format needs a bias")
        if not 2 <= weight_format.bits <= 16:
            raise FormatError(f"weight bit width {weight_format.bits} out of range 2..16")
        self.weight_format = weight_format
        self.bias_format = bias_format
        self.weight = nn.Parameter(weight.detach().to(torch.float32).clone())
        # float64: a bias of up to 32 bits is held exactly
        self.bias = (
            nn.Parameter(bias.detach().to(torch.float64).clone()) if bias is not None else None
        )

    @classmethod
    def _real(cls, q: torch.Tensor, fmt: FixedPointFormat) -> torch.Tensor:
        if q.is_floating_point():
            if not torch.equal(q, torch.round(q)):
                raise FormatError("integer weights must be whole numbers")
        if not fmt.contains(q):
            raise FormatError(f"integer values outside the range of format {fmt}")
        return q.to(torch.float64) * (2.0**-fmt.frac)

    def int_weight(self) -> torch.Tensor:
        """The integer weight codes (int64): round half to even and saturate the parameter."""
        return quantize_weight(self.weight.detach(), self.weight_format).to(torch.int64)

    def int_bias(self) -> torch.Tensor | None:
        """The integer bias codes (int64) at the bias format, or None."""
        if self.bias is None:
            return None
        assert self.bias_format is not None
        return quantize_weight(self.bias.detach(), self.bias_format).to(torch.int64)

    @property
    def acc_frac(self) -> int:
        assert self.in_frac is not None, "layer is not bound to a network"
        return self.in_frac + self.weight_format.frac

    def _check_bias_frac(self, in_frac: int) -> None:
        if (
            self.bias_format is not None
            and self.bias_format.frac > in_frac + self.weight_format.frac
        ):
            raise FormatError(
                f"bias has {self.bias_format.frac} fractional bits but the accumulator only "
                f"{in_frac + self.weight_format.frac}; the bias could not be added exactly"
            )
        if self.bias_format is not None:
            shift = in_frac + self.weight_format.frac - self.bias_format.frac
            if self.bias_format.bits + shift > 62:
                raise FormatError(
                    f"bias format {self.bias_format} shifted by {shift} bits to the accumulator "
                    "would overflow int64"
                )

    def fake_weight(self, dtype: torch.dtype) -> torch.Tensor:
        w = quantize_weight(self.weight, self.weight_format, ste=True) * (
            2.0**-self.weight_format.frac
        )
        return w.to(dtype)

    def fake_bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        if self.bias is None:
            return None
        assert self.bias_format is not None
        b = quantize_weight(self.bias, self.bias_format, ste=True) * (2.0**-self.bias_format.frac)
        return b.to(dtype)

    def int_bias_acc(self) -> torch.Tensor | None:
        """The bias as an exact integer at the accumulator's scale."""
        b = self.int_bias()
        if b is None:
            return None
        assert self.bias_format is not None
        return b << (self.acc_frac - self.bias_format.frac)

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def float64_exact(self) -> bool:
        """True when ``Σ|W||x|`` stays below 2**53 for every input in the bound ``in_mag`` and every
        weight in the format: then a float64 product of the integers is exact (every partial sum,
        in any order, is an integer of smaller magnitude)."""
        if self.in_mag is None:
            return False
        wf = self.weight_format
        fan_in = math.prod(self.weight.shape[1:])
        return fan_in * self.in_mag * max(-wf.qmin, wf.qmax) < 1 << 53

    def _affine_int(
        self, q: torch.Tensor, w: torch.Tensor, arith_path: str = "auto"
    ) -> torch.Tensor:
        """The bare integer product (linear map or convolution), exact, as int64.

        ``arith_path="int64"`` computes in int64; ``"auto"`` uses a float64 product where
        :meth:`float64_exact` proves it exact for the operands (checked), else int64.
        """
        if arith_path == "auto" and self.float64_exact() and q.numel():
            assert self.in_mag is not None
            if int(q.abs().max()) <= self.in_mag:
                return self._op(q.to(torch.float64), w.to(torch.float64)).to(torch.int64)
        return self._op(q.to(torch.int64), w.to(torch.int64))

    def integer(self, q: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        acc = self._affine_int(q, self.int_weight(), arith_path)
        b = self.int_bias_acc()
        if b is not None:
            acc = acc + b.view(1, -1, *([1] * (acc.dim() - 2)))
        return acc

    def int_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.int_weight()
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        new_lo = self._affine_int(lo, wp) + self._affine_int(hi, wn)
        new_hi = self._affine_int(hi, wp) + self._affine_int(lo, wn)
        b = self.int_bias_acc()
        if b is not None:
            b = b.view(1, -1, *([1] * (new_lo.dim() - 2)))
            new_lo, new_hi = new_lo + b, new_hi + b
        return new_lo, new_hi

    def _format_config(self) -> dict[str, Any]:
        return {
            "weight_format": self.weight_format.to_dict(),
            "bias_format": None if self.bias_format is None else self.bias_format.to_dict(),
        }

    def int_tensors(self) -> dict[str, torch.Tensor]:
        t = {"weight": self.int_weight()}
        b = self.int_bias()
        if b is not None:
            t["bias"] = b
        return t


class QLinear(_Affine):
    """``y = W x + b`` with integer ``W`` (out×in) at ``weight_format`` and ``b`` at ``bias_format``.

    The output is the exact accumulator at ``in_frac + weight_format.frac`` fractional bits.
    """

    kind = "linear"

    @classmethod
    def from_int(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_format: FixedPointFormat,
        bias_format: FixedPointFormat | None,
    ) -> QLinear:
        """Build from integer codes (the model file's tensors)."""
        return cls(
            cls._real(weight, weight_format),
            None if bias is None else cls._real(bias, bias_format),  # type: ignore[arg-type]
            weight_format,
            bias_format,
        )

    def __init__(self, weight, bias, weight_format, bias_format) -> None:  # noqa: ANN001
        if weight.dim() != 2:
            raise FormatError(
                f"linear weight must be 2-D (out×in), got shape {tuple(weight.shape)}"
            )
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise FormatError(
                f"linear bias shape {tuple(bias.shape)} does not match {weight.shape[0]} outputs"
            )
        super().__init__(weight, bias, weight_format, bias_format)
        self.out_features, self.in_features = (int(s) for s in weight.shape)

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        if in_shape != (self.in_features,):
            raise FormatError(
                f"linear layer expects {self.in_features} input features, got shape {in_shape}"
            )
        self._check_bias_frac(in_frac)
        return (self.out_features,), in_frac + self.weight_format.frac

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w.t()

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        return F.linear(v, self.fake_weight(v.dtype), self.fake_bias(v.dtype))

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}→{self.out_features}, w {self.weight_format}, b {self.bias_format}"
        )

    def config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "in_features": self.in_features,
            "out_features": self.out_features,
            **self._format_config(),
        }


class QConv2d(_Affine):
    """2-D convolution with integer weights (out×in×kh×kw), stride and zero padding."""

    kind = "conv2d"

    @classmethod
    def from_int(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_format: FixedPointFormat,
        bias_format: FixedPointFormat | None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
    ) -> QConv2d:
        return cls(
            cls._real(weight, weight_format),
            None if bias is None else cls._real(bias, bias_format),  # type: ignore[arg-type]
            weight_format,
            bias_format,
            stride,
            padding,
        )

    def __init__(  # noqa: D107
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_format: FixedPointFormat,
        bias_format: FixedPointFormat | None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        if weight.dim() != 4:
            raise FormatError(
                f"conv2d weight must be 4-D (out×in×kh×kw), got {tuple(weight.shape)}"
            )
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise FormatError(
                f"conv2d bias shape {tuple(bias.shape)} does not match {weight.shape[0]} channels"
            )
        super().__init__(weight, bias, weight_format, bias_format)
        self.out_channels, self.in_channels, kh, kw = (int(s) for s in weight.shape)
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise FormatError(f"stride must be ≥ 1 and padding ≥ 0, got {stride}, {padding}")

    def _bind(self, in_shape: Shape, in_frac: int) -> tuple[Shape, int]:
        if len(in_shape) != 3 or in_shape[0] != self.in_channels:
            raise FormatError(
                f"conv2d layer expects input C×H×W with C={self.in_channels}, got shape {in_shape}"
            )
        self._check_bias_frac(in_frac)
        hw = []
        for size, k, s, p in zip(in_shape[1:], self.kernel_size, self.stride, self.padding):
            out = (size + 2 * p - k) // s + 1
            if out < 1:
                raise FormatError(f"conv2d kernel {self.kernel_size} larger than input {in_shape}")
            hw.append(out)
        return (self.out_channels, hw[0], hw[1]), in_frac + self.weight_format.frac

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding)

    def fake(self, v: torch.Tensor) -> torch.Tensor:
        w, b = self.fake_weight(v.dtype), self.fake_bias(v.dtype)
        return F.conv2d(v, w, b, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}→{self.out_channels}, k={self.kernel_size}, s={self.stride}, "
            f"p={self.padding}, w {self.weight_format}, b {self.bias_format}"
        )

    def config(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            **self._format_config(),
        }
