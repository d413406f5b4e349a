"""Direct u8 × s8 convolutions and products in oneDNN (PyTorch's quantized CPU kernels), exact.

A :class:`QConv2d` or :class:`QLinear` layer of the :class:`~qcert.quant.int8.Int8Executor` runs here
when a static check at build time proves the kernel exact for it:

* its inputs lie in ``[0, 255]`` (the static interval bounds over the whole input range; a
  convolution's zero padding is then the quantized 0 too) and its weights in int8;
* no int16 pair sum of two u8 × s8 products can saturate: either the kernel on this CPU does not
  add products pairwise in int16 (found by one probe per kind with all weights 127 on inputs 255:
  VNNI/AMX CPUs), or every weight used lies in ``[−64, 64]`` (``2 · 255 · 64 < 2**15``). On
  AVX2-only CPUs a layer with larger weights is split into ``clamp(W, −64, 64)`` and the residual
  ``W − clamp(W, −64, 64)`` on the output channels that have one (few);
* every value that passes through float32 inside the kernel is an integer below ``2**24`` in
  magnitude, so its conversion and the power-of-two scalings are exact.

The kernels (``torch.ops.onednn.qconv2d_pointwise`` / ``qlinear_pointwise`` on plain uint8 tensors,
channels-last for convolutions) accumulate in int32 and then either

* **fused**: requantize in the kernel and write the next layer's uint8 operand. With weight scale 2,
  bias ``b₂`` and output scale ``2**(s+1)`` the kernel returns ``round_half_even((2·acc + b₂) /
  2**(s+1))`` saturated to ``[0, 255]``; ``b₂ = 2b + 1`` gives half-up rounding of ``(acc + b) /
  2**s`` (an odd numerator is never a tie), ``2b`` half-to-even, ``2b − 2**s + 1`` floor. Used for
  a following requantization to 8-bit unsigned with a right shift, on an unsplit weight, when
  ``2·max|acc + b| + 2**s + 1 < 2**24``;
* **float32 out**: return the raw accumulators in float32 (exact below ``2**24``; the bias stays out
  of the kernel), which one compiled pass adds up (with the residual part), corrects by the bias in
  int64, and requantizes (every rounding rule) or returns as the int64 logits.

A 1×1 convolution with a stride and no padding runs on the unit-stride kernel, on every stride-th
input row and column taken here: oneDNN's own strided 1×1 kernel (its reduce-to-unit-stride copy) is
not exact with more than one thread (torch 2.13, oneDNN 3.12, AVX2: some outputs wrong now and then),
a defect no static bound or build-time probe can rule out, since it depends on the thread count and
on timing.

Each layer is also checked on its own extreme inputs (all 0, all 255, and inputs matched to the
weight signs) against int64 arithmetic, and the whole executor against the reference executor.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from qcert.quant.format import Rounding
from qcert.quant.layers import QConv2d, QLinear, QRequant

__all__ = ["OnednnStep", "onednn_available", "onednn_step"]

_F32_EXACT = 2**24
#: the rounding rules as the compiled kernels' ``mode`` codes
ROUNDING_CODE = {Rounding.FLOOR: 0, Rounding.HALF_UP: 1, Rounding.HALF_EVEN: 2}


@njit(inline="always", cache=True)
def round_shift(v, shift, mode):  # pragma: no cover - compiled
    # the rounding rule ``mode`` (ROUNDING_CODE) of v / 2**shift, shift >= 1, in int64 arithmetic
    q = v >> shift
    half = np.int64(1) << (shift - 1)
    if mode == 1:
        q = (v + half) >> shift
    elif mode == 2:
        rem = v - (q << shift)
        if rem > half or (rem == half and (q & 1) == 1):
            q += 1
    return q


def onednn_available() -> bool:
    """True when this torch build has oneDNN's quantized pointwise kernels on CPU."""
    ops = getattr(torch.ops, "onednn", None)
    try:
        return (
            torch.backends.mkldnn.is_available()
            and ops is not None
            and hasattr(ops, "qconv2d_pointwise")
            and hasattr(ops, "qlinear_pointwise")
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without the ops
        return False


@njit(parallel=True, cache=True, nogil=True)
def _finish(main, res, slot, corr, shift, mode, qmin, qmax, out):  # pragma: no cover - compiled
    # v = main + res[:, slot] (where slot ≥ 0) + corr in int64; out = requant(v) (mode ≥ 0: the
    # rounding rule) or v (mode −1)
    m, c = main.shape
    for r in prange(m):
        for k in range(c):
            v = np.int64(main[r, k]) + corr[k]
            if slot[k] >= 0:
                v += np.int64(res[r, slot[k]])
            if mode < 0:
                out[r, k] = v
                continue
            out[r, k] = min(max(round_shift(v, shift, mode), qmin), qmax)


@dataclass(frozen=True)
class _Geometry:
    """A convolution's stride, padding and input shape C×H×W as the kernel sees them; ``sample``
    (a 1×1 convolution's stride, padding 0): the input rows and columns taken before the kernel."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    in_shape: tuple[int, int, int]
    sample: tuple[int, int] = (1, 1)

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """The input the kernel reads: every ``sample``-th row and column of ``x`` (N×C×H×W)."""
        sh, sw = self.sample
        return x if (sh, sw) == (1, 1) else x[:, :, ::sh, ::sw]


@dataclass
class _Packed:
    """One prepacked int8 weight (all output channels, or the residual's ``rows``)."""

    weight: torch.Tensor  # the prepacked oneDNN weight
    scales: torch.Tensor  # per output channel, float32
    zero_points: torch.Tensor  # per output channel, int64 zeros
    rows: torch.Tensor | None  # output channels of a residual part (int64), None: all


@dataclass
class OnednnStep:
    """A convolution or linear layer (and a fused requantization) on oneDNN's u8 × s8 kernels.

    Takes values ``t + t_offset`` in ``[0, 255]`` and returns ``(out, 0)``: the requantized values
    (uint8 where the format fits, else int32; a convolution's as an N×C×H×W view of channel-last
    memory) or the int64 accumulators."""

    conv: _Geometry | None  # a convolution's geometry
    parts: list[_Packed]
    correction: torch.Tensor  # int64 per output channel: the bias (float32-out mode)
    requant: QRequant | None
    shift: int
    fused_bias: torch.Tensor | None  # float32 b₂ of the fused mode, None: float32-out mode
    out_channels: int

    def __post_init__(self) -> None:
        # slot[k]: the residual's column of output channel k, or −1
        self.slot = np.full(self.out_channels, -1, dtype=np.int64)
        if len(self.parts) > 1 and self.parts[1].rows is not None:
            self.slot[self.parts[1].rows.numpy()] = np.arange(self.parts[1].rows.numel())

    def _run(self, x: torch.Tensor, part: _Packed, fused: bool) -> torch.Tensor:
        bias = self.fused_bias if fused else None
        scale = float(2 ** (self.shift + 1)) if fused else 1.0
        dtype = None if fused else torch.float32
        if self.conv is not None:
            stride, padding = list(self.conv.stride), list(self.conv.padding)
            return torch.ops.onednn.qconv2d_pointwise(
                x, 1.0, 0, part.weight, part.scales, part.zero_points, bias, stride, padding,
                [1, 1], 1, scale, 0, dtype, "none", [], None,
            )  # fmt: skip
        return torch.ops.onednn.qlinear_pointwise(
            x, 1.0, 0, part.weight, part.scales, part.zero_points, bias, scale, 0, dtype,
            "none", [], "",
        )  # fmt: skip

    def __call__(self, t: torch.Tensor, t_offset: int) -> tuple[torch.Tensor, int]:
        if t.dtype == torch.uint8 and t_offset == 0:
            x = t
        else:  # the values lie in [0, 255] by the static bounds
            x = (t.to(torch.int32) + t_offset).to(torch.uint8)
        if self.conv is not None:
            x = self.conv.take(x).contiguous(memory_format=torch.channels_last)
        else:
            x = x.contiguous()
        if self.fused_bias is not None:
            return self._run(x, self.parts[0], True), 0
        main = self._run(x, self.parts[0], False)
        res = [self._run(x, p, False) for p in self.parts[1:]]
        if self.conv is not None:  # N×C×H×W views of channel-last memory → (N·H·W) × C
            n, _, oh, ow = main.shape
            flat = [y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]) for y in (main, *res)]
        else:
            flat = [main, *res]
        m2, r2 = flat[0], flat[1] if res else torch.empty((1, 1))
        if self.requant is None:
            out = torch.empty(m2.shape, dtype=torch.int64)
            mode, qmin, qmax = -1, 0, 0
        else:
            fmt = self.requant.format
            small = fmt.qmin >= 0 and fmt.qmax <= 255
            out = torch.empty(m2.shape, dtype=torch.uint8 if small else torch.int32)
            mode, qmin, qmax = ROUNDING_CODE[self.requant.rounding], fmt.qmin, fmt.qmax
        _finish(
            m2.numpy(), r2.contiguous().numpy(), self.slot, self.correction.numpy(), self.shift,
            mode, qmin, qmax, out.numpy(),
        )  # fmt: skip
        if self.conv is not None:
            out = out.view(n, oh, ow, -1).permute(0, 3, 1, 2)
        return out, 0


def _pack(
    w: torch.Tensor, conv: _Geometry | None, scale: float, rows: torch.Tensor | None
) -> _Packed:
    """Prepack the int8 weight ``w`` (out × in, or out × C × kh × kw) with a per-channel scale."""
    oc = w.shape[0]
    scales = torch.full((oc,), scale, dtype=torch.float32)
    zps = torch.zeros(oc, dtype=torch.int64)
    w8 = w.to(torch.int8).contiguous()
    if conv is not None:
        packed = torch.ops.onednn.qconv_prepack(
            w8, scales, 1.0, 0, list(conv.stride), list(conv.padding), [1, 1], 1, None
        )
    else:
        packed = torch.ops.onednn.qlinear_prepack(w8, None)
    return _Packed(packed, scales, zps, rows)


def _reference(x: torch.Tensor, w: torch.Tensor, conv: _Geometry | None) -> torch.Tensor:
    """The exact int64 product (no bias) of uint8 inputs ``x`` and the weight ``w``."""
    if conv is not None:
        xs = conv.take(x).to(torch.float64)
        y = F.conv2d(xs, w.to(torch.float64), None, conv.stride, conv.padding)
        return y.round().to(torch.int64)  # every partial sum < 2**53: exact
    return x.to(torch.int64) @ w.to(torch.int64).t()


@functools.cache
def _pairs_saturate(kind: str) -> bool:
    """Whether this CPU's kernel of ``kind`` saturates int16 pair sums (AVX2 without VNNI): one
    probe with every weight 127 on inputs 255, where any pairwise int16 sum overflows."""
    if kind == "conv":
        x = torch.full((2, 8, 6, 6), 255, dtype=torch.uint8).contiguous(
            memory_format=torch.channels_last
        )
        w = torch.full((8, 8, 3, 3), 127, dtype=torch.int64)
        geometry: _Geometry | None = _Geometry((1, 1), (1, 1), (8, 6, 6))
    else:
        x = torch.full((4, 64), 255, dtype=torch.uint8)
        w = torch.full((8, 64), 127, dtype=torch.int64)
        geometry = None
    step = _float_step(w, geometry)
    return not torch.equal(step(x, 0)[0], _reference(x, w, geometry))


def _float_step(w: torch.Tensor, conv: _Geometry | None) -> OnednnStep:
    """A float32-out step computing the raw int64 product with ``w`` (for probes)."""
    zero = torch.zeros(w.shape[0], dtype=torch.int64)
    return OnednnStep(conv, [_pack(w, conv, 1.0, None)], zero, None, 0, None, w.shape[0])


def onednn_step(
    layer: QLinear | QConv2d,
    w: torch.Tensor,
    in_bound: tuple[int, int],
    requant: QRequant | None,
) -> tuple[OnednnStep | None, str | None]:
    """The oneDNN step of ``layer`` with int64 weight ``w`` (a linear layer's columns possibly
    reordered by the caller; a convolution's as out × C × kh × kw), inputs within ``in_bound``,
    and the following ``requant`` fused when possible; or ``(None, why)`` when no exactness
    argument covers it."""
    if not onednn_available():
        return None, "no oneDNN quantized kernels in this torch build"
    lo, hi = in_bound
    if lo < 0 or hi > 255:
        return None, "inputs outside [0, 255]"
    if w.numel() == 0 or w.min() < -128 or w.max() > 127:
        return None, "weights outside int8"
    conv = None
    if isinstance(layer, QConv2d):
        if layer.in_shape is None or len(layer.in_shape) != 3:
            return None, "unbound convolution"
        c, h, wd = layer.in_shape
        conv = _Geometry(layer.stride, layer.padding, (c, h, wd))
        if layer.kernel_size == (1, 1) and layer.padding == (0, 0) and layer.stride != (1, 1):
            # oneDNN's strided 1×1 kernel (its reduce-to-unit-stride copy) is not exact with more
            # than one thread (torch 2.13, oneDNN 3.12, AVX2: wrong outputs now and then): take
            # the strided input rows and columns here and run the unit-stride kernel
            conv = _Geometry((1, 1), (0, 0), (c, h, wd), layer.stride)
    kind = "conv" if conv is not None else "linear"
    oc = w.shape[0]
    flat = w.reshape(oc, -1)
    b = layer.int_bias_acc()
    bias = b.to(torch.int64) if b is not None else torch.zeros(oc, dtype=torch.int64)
    shift = 0
    if requant is not None:
        assert requant.in_frac is not None
        shift = requant.in_frac - requant.format.frac
        if not 0 < shift < 40:
            requant = None
    # |acc| of each part (no bias) below 2**24 for the float32 pass: Σ|w|·255 per channel
    parts_w = [w]
    rows: torch.Tensor | None = None
    if _pairs_saturate(kind) and (w.min() < -64 or w.max() > 64):
        main = w.clamp(-64, 64)
        rows = (flat != main.reshape(oc, -1)).any(dim=1).nonzero().squeeze(1)
        parts_w = [main, (w - main)[rows]]
    for p in parts_w:
        if int(p.reshape(p.shape[0], -1).abs().sum(dim=1).max()) * hi >= _F32_EXACT:
            return None, "accumulators may exceed float32's exact integers"
    geo = conv
    fmt = requant.format if requant is not None else None
    fused = (
        requant is not None
        and fmt is not None
        and len(parts_w) == 1
        and fmt.qmin == 0
        and fmt.qmax == 255
        and 2 * (int(flat.abs().sum(dim=1).max()) * hi + int(bias.abs().max())) + 2**shift + 1
        < _F32_EXACT
    )
    if fused:
        assert requant is not None
        extra = {"half_up": 1, "half_even": 0, "floor": 1 - 2**shift}[requant.rounding.value]
        b2 = (2 * bias + extra).to(torch.float32)
        step = OnednnStep(geo, [_pack(w, conv, 2.0, None)], bias, requant, shift, b2, oc)
    else:
        packed = [_pack(parts_w[0], conv, 1.0, None)]
        if rows is not None and rows.numel():
            packed.append(_pack(parts_w[1], conv, 1.0, rows))
        step = OnednnStep(geo, packed, bias, requant, shift, None, oc)
    if not _exact_on_extremes(step, w, bias, lo, hi):
        return None, f"oneDNN's {kind} kernel is not exact here"
    return step, None


def _exact_on_extremes(
    step: OnednnStep, w: torch.Tensor, bias: torch.Tensor, lo: int, hi: int
) -> bool:
    """The step against int64 arithmetic on inputs all ``lo``, all ``hi`` and, for a linear layer,
    rows matched to each output channel's weight signs (where pair sums are largest)."""
    conv = step.conv
    if conv is not None:
        x = torch.stack([torch.full(conv.in_shape, lo), torch.full(conv.in_shape, hi)])
    else:
        signs = w > 0
        x = torch.cat(
            [
                torch.full((1, w.shape[1]), lo),
                torch.full((1, w.shape[1]), hi),
                torch.where(signs, hi, lo),
                torch.where(signs, lo, hi),
            ]
        )
    acc = _reference(x, w, conv)
    acc = acc + (bias.view(1, -1, 1, 1) if conv is not None else bias.view(1, -1))
    if step.requant is not None:
        want = step.requant.integer(acc)
    else:
        want = acc
    got = step(x.to(torch.uint8), 0)[0].to(torch.int64)
    return torch.equal(got, want)
