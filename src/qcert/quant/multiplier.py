"""Requantization by a real multiplier, as deployed int8 runtimes compute it (docs/semantics.md).

An int32 accumulator ``acc`` (already centred: input and weight zero points subtracted, bias added)
becomes the next tensor's code ``q`` in ``[qmin, qmax]`` with zero point ``z``. Two runtimes' rules,
each emulated bit for bit in int64 / float32 arithmetic:

* :func:`float32_rescale` — onnxruntime's CPU kernels (MLAS ``MlasRequantizeOutput``, used by
  ``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearGlobalAveragePool``):
  ``q = rne(clamp(fl32(fl32(acc) · M), qmin − z, qmax − z)) + z`` with a float32 multiplier ``M``,
  every float operation rounded to nearest even.
* :func:`fixed_point_rescale` — gemmlowp / TFLite: ``M = M0 · 2**-31 · 2**-n`` with an int32
  ``M0``; ``q = clamp(RDBPOT(SRDHM(acc, M0), n) + z, qmin, qmax)`` (saturating rounding doubling
  high multiply, rounding ties toward +inf, then a rounding right shift, rounding ties away
  from zero).

Both first saturate ``acc`` to int32 (the runtimes hold it in int32; qcert's import proves it never
leaves that range). Both are monotone non-decreasing in ``acc`` for ``M ≥ 0``, so interval bounds are
their values at the interval ends.

:func:`ort_output_scale` is how onnxruntime combines the three float32 scales into ``M``, and
:func:`quantize_linear` is onnxruntime's ``QuantizeLinear`` (float input → codes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qcert.errors import FormatError, InputError

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "check_float32",
    "fixed_point_rescale",
    "float32_rescale",
    "ort_global_pool_scale",
    "ort_output_scale",
    "quantize_linear",
    "quantize_multiplier",
]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def check_float32(values: Sequence[float], what: str) -> list[float]:
    """Positive finite float32 values (as Python floats), or :class:`FormatError`."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise FormatError(f"{what} must be numbers, got {v!r}")
        f = float(v)
        if not np.isfinite(f) or f <= 0:
            raise FormatError(f"{what} must be positive and finite, got {v!r}")
        if float(np.float32(f)) != f:
            raise FormatError(f"{what} {v!r} is not a float32 value (give it exactly)")
        out.append(f)
    return out


def _saturate_int32(acc: torch.Tensor) -> torch.Tensor:
    if acc.dtype != torch.int64:
        raise FormatError(f"requantization needs an int64 tensor, got {acc.dtype}")
    return acc.clamp(INT32_MIN, INT32_MAX)


def float32_rescale(
    acc: torch.Tensor, scale: torch.Tensor, zero_point: int, qmin: int, qmax: int
) -> torch.Tensor:
    """onnxruntime's requantization (int64 in, int64 codes out).

    ``scale`` is a float32 tensor that broadcasts against ``acc`` (per tensor or per channel).
    ``fl32(acc)`` is exact through float64 (``|acc| < 2**31 < 2**53``) and then rounded once to
    float32, as ``cvtdq2ps`` does; the product is one IEEE float32 multiplication; the clamp bounds
    are integers, so clamping before or after rounding is the same.
    """
    if scale.dtype != torch.float32:
        raise FormatError(f"the multiplier must be float32, got {scale.dtype}")
    a = _saturate_int32(acc).to(torch.float64).to(torch.float32)
    v = a * scale
    v = v.clamp(float(qmin - zero_point), float(qmax - zero_point))
    return torch.round(v).to(torch.int64) + zero_point


def _srdhm(a: torch.Tensor, m0: torch.Tensor) -> torch.Tensor:
    """gemmlowp's SaturatingRoundingDoublingHighMul(a, M0) for int32 ``a`` and ``M0 ≥ 0``:
    ``(a·M0 + nudge) / 2**31`` with C's truncating division and ``nudge = 2**30`` for a
    non-negative product, ``1 − 2**30`` otherwise: ``a·M0 / 2**31`` to the nearest integer, ties
    toward +inf (no saturation case: ``M0 ≥ 0``)."""
    ab = a * m0  # |ab| < 2**62
    nudge = torch.where(ab >= 0, torch.tensor(1 << 30), torch.tensor(1 - (1 << 30)))
    return torch.div(ab + nudge, 1 << 31, rounding_mode="trunc")


def _rdbpot(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """gemmlowp's RoundingDivideByPOT(x, n): ``x / 2**n`` rounded half away from zero."""
    mask = (torch.ones_like(n) << n) - 1
    rem = x & mask
    threshold = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> n) + (rem > threshold).to(torch.int64)


def fixed_point_rescale(
    acc: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    zero_point: int,
    qmin: int,
    qmax: int,
) -> torch.Tensor:
    """gemmlowp / TFLite ``MultiplyByQuantizedMultiplier`` with a right shift, then zero point and
    saturation. ``multiplier`` (``M0`` in ``[0, 2**31 − 1]``) and ``shift`` (``n`` in ``[0, 31]``)
    are int64 tensors that broadcast against ``acc``."""
    a = _saturate_int32(acc)
    x = _rdbpot(_srdhm(a, multiplier), shift)
    return (x + zero_point).clamp(qmin, qmax)


def ort_output_scale(
    in_scale: float, weight_scales: Sequence[float], out_scale: float
) -> list[float]:
    """onnxruntime's combined requantization scale per output channel:
    ``fl32(fl32(s_in · s_w[c]) / s_out)`` (float32 operations; measured against QLinearConv,
    QLinearMatMul and QGemm on this project's tests)."""
    sx, sy = np.float32(in_scale), np.float32(out_scale)
    return [float(np.float32(np.float32(sx * np.float32(w)) / sy)) for w in weight_scales]


def ort_global_pool_scale(in_scale: float, out_scale: float, area: int) -> float:
    """onnxruntime's ``QLinearGlobalAveragePool`` scale: ``fl32(s_in / fl32(s_out · fl32(area)))``."""
    sx, sy = np.float32(in_scale), np.float32(out_scale)
    return float(np.float32(sx / np.float32(sy * np.float32(area))))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """gemmlowp's ``QuantizeMultiplierSmallerThanOne``: ``(M0, n)`` with ``M0 ∈ [2**30, 2**31)``
    (or 0) and ``real ≈ M0 · 2**-31 · 2**-n``, for ``0 ≤ real < 1``."""
    if not 0 <= real < 1:
        raise FormatError(f"a fixed-point multiplier needs 0 <= M < 1, got {real!r}")
    if real == 0:
        return 0, 0
    m, e = np.frexp(real)  # real = m · 2**e, m in [0.5, 1)
    n = -int(e)
    q = round(float(m) * (1 << 31))
    if q == 1 << 31:
        q //= 2
        n -= 1
    if n > 31:
        return 0, 0
    return int(q), n


def quantize_linear(
    x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int
) -> np.ndarray:
    """onnxruntime's ``QuantizeLinear`` of float32 values (MLAS ``MlasQuantizeLinear``):
    ``clamp(rne(fl32(x / s)) + z, qmin, qmax)`` with a float32 division (measured: a multiplication
    by ``1/s`` differs). Returns int64 codes."""
    v = np.asarray(x, dtype=np.float32)
    if not np.isfinite(v).all():
        raise InputError("quantize_linear: the input has NaN or infinite values")
    v = v / np.float32(scale)
    v = np.clip(v, np.float32(qmin - zero_point), np.float32(qmax - zero_point))
    return np.rint(v).astype(np.int64) + zero_point
