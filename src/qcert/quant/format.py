"""Fixed-point formats and rounding rules: the arithmetic every qcert guarantee is about.

A :class:`FixedPointFormat` describes integers ``q`` that stand for the real value ``q * 2**-frac``:
``bits`` wide, signed (two's complement range) or unsigned. :func:`requantize` is the one rounding
step of the integer semantics: an exact integer accumulator held at ``2**-frac_in`` is brought to a
narrower format by a power-of-two shift with a named rounding rule, then saturated.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from qcert.errors import FormatError

MIN_BITS = 2
MAX_BITS = 32  # weights and activations use 2..16; biases and derived tensors may be wider
MAX_ABS_FRAC = 32


class Rounding(str, Enum):
    """How a requantization shift rounds: the value ``v = acc / 2**s`` becomes an integer.

    * ``HALF_UP``: ``floor(v + 1/2)`` (ties toward +inf); QA-IBP and the AAAI'21 QNN benchmarks.
    * ``HALF_EVEN``: ties to the even integer (ONNX ``QuantizeLinear``, ``torch.round``).
    * ``FLOOR``: ``floor(v)``, an arithmetic right shift.
    """

    HALF_UP = "half_up"
    HALF_EVEN = "half_even"
    FLOOR = "floor"

    @classmethod
    def parse(cls, value: Rounding | str) -> Rounding:
        if isinstance(value, Rounding):
            return value
        try:
            return cls(str(value).lower().replace("-", "_"))
        except ValueError:
            known = ", ".join(r.value for r in cls)
            raise FormatError(f"unknown rounding rule {value!r}; expected one of {known}") from None


@dataclass(frozen=True)
class FixedPointFormat:
    """Integers ``q`` in ``[qmin, qmax]`` that represent ``q * 2**-frac``.

    Args:
        bits: bit width, 2..32 (weights and activations: 2..16, checked by the network).
        signed: two's complement range ``[-2**(bits-1), 2**(bits-1)-1]``, else ``[0, 2**bits-1]``.
        frac: number of fractional bits (may be negative: a scale ``2**-frac`` above one).
    """

    bits: int
    signed: bool
    frac: int

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise FormatError(f"bit width must be an integer, got {self.bits!r}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise FormatError(f"bit width {self.bits} out of range {MIN_BITS}..{MAX_BITS}")
        if not isinstance(self.signed, bool):
            raise FormatError(f"signed must be true or false, got {self.signed!r}")
        if not isinstance(self.frac, int) or isinstance(self.frac, bool):
            raise FormatError(f"fractional bits must be an integer, got {self.frac!r}")
        if abs(self.frac) > MAX_ABS_FRAC:
            raise FormatError(f"fractional bits {self.frac} out of range ±{MAX_ABS_FRAC}")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def scale(self) -> float:
        """The real value of one integer step, ``2**-frac`` (exact in float)."""
        return 2.0**-self.frac

    def contains(self, q: torch.Tensor) -> bool:
        """True when every element of the integer tensor ``q`` lies in ``[qmin, qmax]``."""
        return bool(((q >= self.qmin) & (q <= self.qmax)).all())

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "signed": self.signed, "frac": self.frac}

    @classmethod
    def from_dict(cls, d: Any) -> FixedPointFormat:
        if not isinstance(d, dict) or set(d) != {"bits", "signed", "frac"}:
            raise FormatError(f"a format needs exactly the keys bits, signed, frac; got {d!r}")
        return cls(bits=d["bits"], signed=d["signed"], frac=d["frac"])

    def __str__(self) -> str:
        kind = "int" if self.signed else "uint"
        return f"{kind}{self.bits}(frac={self.frac})"


def round_shift(acc: torch.Tensor, shift: int, rounding: Rounding | str) -> torch.Tensor:
    """Exact ``round(acc / 2**shift)`` of an int64 tensor with the given rule (``shift`` may be ≤ 0).

    A non-positive shift multiplies by ``2**-shift`` exactly (the caller keeps the product below
    2**63; :func:`requantize` does); a positive one rounds.
    """
    rounding = Rounding.parse(rounding)
    if acc.dtype != torch.int64:
        raise FormatError(f"round_shift needs an int64 tensor, got {acc.dtype}")
    if shift <= 0:
        return acc * (1 << (-shift))
    if rounding is Rounding.FLOOR:
        return acc >> shift
    half = 1 << (shift - 1)
    if rounding is Rounding.HALF_UP:
        return (acc + half) >> shift
    q = acc >> shift
    rem = acc - (q << shift)  # in [0, 2**shift)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    return q + up.to(torch.int64)


def requantize(
    acc: torch.Tensor, frac_in: int, fmt: FixedPointFormat, rounding: Rounding | str
) -> torch.Tensor:
    """Integer requantization: ``saturate(round(acc * 2**(fmt.frac - frac_in)))`` in int64.

    This is the reference semantics; :func:`fake_requantize` computes the same in floating point.
    A left shift (``fmt.frac > frac_in``) saturates without int64 overflow: values that would
    leave the format are clamped before they are multiplied.
    """
    shift = frac_in - fmt.frac
    if shift < 0:
        k = -shift
        if k >= 62:  # every nonzero value saturates
            return torch.where(
                acc > 0,
                torch.full_like(acc, fmt.qmax),
                torch.where(acc < 0, torch.full_like(acc, fmt.qmin), torch.zeros_like(acc)),
            )
        m = 1 << k
        acc = acc.clamp(-((-fmt.qmin) // m) - 1, fmt.qmax // m + 1)
    q = round_shift(acc, shift, rounding)
    return q.clamp(fmt.qmin, fmt.qmax)


def round_float(y: torch.Tensor, rounding: Rounding | str) -> torch.Tensor:
    """The rounding rule on a float tensor (no gradient handling). Exact when ``y`` is exact."""
    rounding = Rounding.parse(rounding)
    if rounding is Rounding.HALF_UP:
        return torch.floor(y + 0.5)
    if rounding is Rounding.HALF_EVEN:
        return torch.round(y)
    return torch.floor(y)


def round_ste(y: torch.Tensor, rounding: Rounding | str) -> torch.Tensor:
    """Rounding in the forward pass, identity gradient in the backward pass."""
    return y + (round_float(y, rounding) - y).detach()


def fake_requantize(
    v: torch.Tensor, fmt: FixedPointFormat, rounding: Rounding | str, ste: bool = True
) -> torch.Tensor:
    """Float twin of :func:`requantize` on real values ``v``; returns real values on ``fmt``'s grid.

    Gradient: the clipped straight-through estimator, identity where the rounded code lies inside
    ``[qmin, qmax]`` and zero where it saturates. Bit-exact with :func:`requantize` whenever ``v`` is
    an exact dyadic value in the tensor's dtype (see docs/semantics.md).
    """
    y = v * (2.0**fmt.frac)
    r = round_ste(y, rounding) if ste else round_float(y, rounding)
    return torch.clamp(r, fmt.qmin, fmt.qmax) * (2.0**-fmt.frac)


def smallest_int_dtype(lo: int, hi: int) -> torch.dtype:
    """The narrowest signed torch integer dtype that holds ``[lo, hi]`` (used by the model file)."""
    for dt in (torch.int8, torch.int16, torch.int32, torch.int64):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise FormatError(f"range [{lo}, {hi}] does not fit in int64")
