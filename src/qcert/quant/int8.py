"""A fast exact executor: oneDNN's direct u8 × s8 kernels and torch's int8 matrix product, int32
accumulation.

A layer whose exactness :mod:`qcert.quant.onednn` proves at build time (inputs in ``[0, 255]``,
accumulators below ``2**24``, no int16 pair saturation) runs there: a direct convolution or product
with the requantization fused in the kernel (``onednn=False`` turns this off). Otherwise:
For each :class:`QLinear` or :class:`QConv2d` whose integer weights fit int8 and whose input takes
at most 256 values (by the static interval bounds over the whole input range; for a padded
convolution the padding's 0 counts as a value), the product is computed as

    ``W q + b = W (q − o) + (o · Σ_k W[:, k] + b)``

with ``q − o`` in int8 and ``torch._int_mm`` (oneDNN's int8 GEMM; VNNI/AMX instructions where the
CPU has them) accumulating in int32; a convolution runs on its im2col patches, read channel-last,
and keeps its output channel-last in memory so the next convolution reads it without a copy. That
is exact: ``|W (q − o)| ≤ K · 128 · 128 < 2**31`` for the fan-in ``K`` this module accepts. The
correction term is added in int64. A following :class:`QRequant` with a right shift is fused: one
compiled pass adds the correction, rounds (every rule), saturates, and writes the next product's
int8 operand directly (its offset comes from the same static bounds). Every other layer (pooling,
wider weights or inputs, left shifts) runs the reference code in int64, so any network runs; only
the eligible layers are faster.

Two torch 2.13 defects are avoided (both pinned by tests): ``_int_mm`` on CPU returns wrong values
for a fan-in of 1 (such layers use the reference code) and reads a strided first operand as if it
were contiguous (operands are copied to contiguous memory first).

Construction checks ``torch._int_mm`` on every fast layer's own extreme operands (constant rows at
127 and −128 and rows matched to the weight signs, where an int16 pair-sum saturation would show).
On CPUs without VNNI, oneDNN's int8 GEMM does saturate for full-range 8-bit weights (seen with
``ONEDNN_MAX_CPU_ISA=AVX2``); the layer then computes ``clamp(W, −64, 64)`` in one product and the
residual ``W − clamp(W, −64, 64)`` in a second one restricted to its nonzero rows (large weights
are rare: 0.04 % of an MNIST MLP's first layer, in 28 of its 256 rows); both have weights within
±64, so no pair sum can saturate. The reference code runs if even that is not exact. Finally the
whole network is compared with the reference executor on probe inputs, and :class:`QcertError` is
raised on any difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from qcert.errors import InputError, QcertError
from qcert.quant.executor import check_executor
from qcert.quant.layers import QConv2d, QFlatten, QLayer, QLinear, QRequant
from qcert.quant.network import QNetwork
from qcert.quant.onednn import ROUNDING_CODE, OnednnStep, onednn_step, round_shift

__all__ = ["Int8Executor", "int8_available"]

_MAX_FAN_IN = (2**31 - 1) // (128 * 128)


@njit(parallel=True, cache=True, nogil=True)
def _requant(acc, corr, shift, mode, qmin, qmax, out_offset, out):  # pragma: no cover - compiled
    # out = clamp(round((acc + corr) / 2**shift), qmin, qmax) − out_offset, in int64 arithmetic
    m, c = acc.shape
    for r in prange(m):
        for k in range(c):
            v = np.int64(acc[r, k]) + corr[k]
            out[r, k] = min(max(round_shift(v, shift, mode), qmin), qmax) - out_offset


def int8_available() -> bool:
    """True when this torch build has the int8 matrix product (``torch._int_mm``)."""
    return hasattr(torch, "_int_mm")


def _exact_products(weight: torch.Tensor, weight_t: torch.Tensor) -> bool:
    """Whether ``torch._int_mm`` is exact for this weight on the operands where int8 kernels go
    wrong: kernels that add two u8 × s8 products in int16 (AVX2 without VNNI: the input shifted to
    u8 by +128, or the weight) saturate on constant extreme rows; the sign-matched rows make every
    product of a weight row extreme with the same sign."""
    wl = weight.to(torch.int64)
    m, k = wl.shape
    probe = torch.cat(
        [
            torch.where(wl >= 0, 127, -128),
            torch.where(wl >= 0, -128, 127),
            torch.full((1, k), 127),
            torch.full((1, k), -128),
        ]
    )
    got = torch._int_mm(probe.to(torch.int8), weight_t).to(torch.int64)
    return torch.equal(got, probe @ wl.t())


@dataclass
class _Im2col:
    """A convolution's geometry: its product is ``columns(a) @ W'ᵀ`` with ``W'`` the weight as
    out × (kh·kw·C), the input patches read channel-last."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_hw: tuple[int, int]

    def columns(self, a: torch.Tensor, pad_value: int) -> torch.Tensor:
        """(N·OH·OW) × (kh·kw·C) int8 patches of the int8 N×C×H×W input (any strides; the
        padding is ``pad_value``, the offset representation of a true 0)."""
        x = a.permute(0, 2, 3, 1)  # channel-last: contiguous when a came from a convolution
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (0, 0, pw, pw, ph, ph), value=pad_value)
        x = x.contiguous()
        n, _, _, c = x.shape
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out_hw
        if c >= 4:  # one strided gather (measured faster for several channels)
            s_n, s_h, s_w, s_c = x.stride()
            view = x.as_strided((n, oh, ow, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))
            return view.reshape(n * oh * ow, kh * kw * c).contiguous()
        out = torch.empty((n, oh, ow, kh, kw, c), dtype=torch.int8)
        for i in range(kh):  # one block copy per kernel tap (measured faster for 1–3 channels)
            for j in range(kw):
                out[:, :, :, i, j, :] = x[
                    :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw
                ]
        return out.view(n * oh * ow, kh * kw * c)


@dataclass
class _Linear:
    # the product a @ Wᵀ as parts (weight_t, rows): weight_t is a K×M' int8 transposed view of a
    # contiguous tensor, and the part adds a @ weight_t to the output columns rows (None: all).
    # One part (W), or two where the kernel saturates on full-range weights: clamp(W, −64, 64) and
    # the residual W − clamp(W, −64, 64) on its nonzero rows only (few: large weights are rare)
    parts: list[tuple[torch.Tensor, torch.Tensor | None]]
    offset: int  # input offset o: the int8 operand is q − o
    correction: torch.Tensor  # M int64: o · rowsum(W) + bias at the accumulator scale
    requant: QRequant | None  # fused requantization (a right shift), compiled, one pass
    shift: int
    conv: _Im2col | None = None  # a convolution: the product runs on its patches
    # the fused requantization writes int8 in the next product's representation (q − out_offset)
    # when out_int8, else int32 values (out_offset 0)
    out_offset: int = 0
    out_int8: bool = False

    def __call__(self, t: torch.Tensor, t_offset: int) -> tuple[torch.Tensor, int]:
        if t.dtype == torch.int8 and t_offset == self.offset:
            a = t
        else:  # values t + t_offset lie in [o − 128, o + 127] by the static bounds
            a = (t.to(torch.int32) + (t_offset - self.offset)).to(torch.int8)
        n = a.shape[0]
        if self.conv is not None:
            a = self.conv.columns(a, -self.offset)
        # torch 2.13's CPU _int_mm reads its first operand as if it were contiguous: a strided
        # view (overlapping im2col windows, a caller's slice) gives garbage, so copy it first
        a = a.contiguous()
        (w0, _), *rest = self.parts
        acc = torch._int_mm(a, w0)  # exact int32 (see the module docstring)
        for w, rows in rest:
            acc[:, rows] += torch._int_mm(a, w)
        if self.requant is None:
            out, offset = acc.to(torch.int64) + self.correction, 0
        else:
            fmt = self.requant.format
            out = torch.empty(acc.shape, dtype=torch.int8 if self.out_int8 else torch.int32)
            code = ROUNDING_CODE[self.requant.rounding]
            _requant(
                acc.numpy(), self.correction.numpy(), self.shift, code, fmt.qmin, fmt.qmax,
                self.out_offset, out.numpy(),
            )  # fmt: skip
            offset = self.out_offset
        if self.conv is not None:  # N×C×H×W, a view of channel-last memory
            oh, ow = self.conv.out_hw
            out = out.view(n, oh, ow, -1).permute(0, 3, 1, 2)
        return out, offset


class _FlattenChannelLast:
    """Flatten a convolution's channel-last output in (H, W, C) order (a view); the next linear
    layer's weight columns are reordered to match."""


class Int8Executor:
    """Exact integer logits of a :class:`QNetwork` with int8 products where they are provably exact.

    ``logits(q)`` takes integer inputs inside the input range (like
    :meth:`QNetwork.integer_forward`, without its checks) and returns the same int64 logits.
    ``logits_offset(a)`` takes int8 inputs ``a = q − input_offset`` (when :attr:`input_offset` is
    not ``None``), which saves a conversion for callers that build inputs themselves.
    """

    def __init__(self, net: QNetwork, probes: int = 256, onednn: bool = True) -> None:
        if not int8_available():
            raise QcertError("this torch build has no int8 matrix product (torch._int_mm)")
        self.net = net
        lo_v, hi_v = net.input_range
        box = (1, *net.input_shape)
        bounds = net.int_bounds(torch.full(box, lo_v), torch.full(box, hi_v))
        out_bounds = [(int(lo.min()), int(hi.max())) for lo, hi in bounds]
        in_bounds = [(lo_v, hi_v), *out_bounds[:-1]]
        layers = list(net.layers)
        self._steps: list[_Linear | OnednnStep | _FlattenChannelLast | QLayer] = []
        self.fast_layers = 0
        #: layers on oneDNN's direct u8 × s8 kernels (:mod:`qcert.quant.onednn`)
        self.onednn_layers = 0
        #: why layers that could have been fast were not (an inexact int8 kernel)
        self.notes: list[str] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            fused = layers[i + 1] if i + 1 < len(layers) else None
            step: _Linear | OnednnStep | None = None
            if isinstance(layer, QLinear | QConv2d):
                requant = fused if isinstance(fused, QRequant) else None
                # after a convolution's channel-last output and a flatten, a linear layer can take
                # its weight columns in (H, W, C) order: the flatten is then a view, not a copy
                cl = (
                    len(self._steps) >= 2
                    and isinstance(self._steps[-1], QFlatten)
                    and isinstance(self._steps[-2], _Linear | OnednnStep)
                    and self._steps[-2].conv is not None
                    and isinstance(layer, QLinear)
                )
                prev = self._steps[-1] if self._steps else None
                chw = prev.in_shape if cl and isinstance(prev, QFlatten) else None
                if onednn:
                    step = self._onednn(layer, in_bounds[i], requant, chw)
                if step is None:
                    step = self._linear(layer, in_bounds[i], out_bounds[i], requant, chw)
                if step is not None and cl:
                    self._steps[-1] = _FlattenChannelLast()
            if step is not None:
                self._steps.append(step)
                self.fast_layers += 1
                i += 2 if step.requant is not None else 1
                continue
            self._steps.append(layer)
            i += 1
        # a fused requantization feeds the next product directly in its int8 representation (its
        # offset was chosen from the same static bounds the requantized values lie in)
        for k, done in enumerate(self._steps):
            flat = (QFlatten, _FlattenChannelLast)
            nxt = next((s for s in self._steps[k + 1 :] if not isinstance(s, flat)), None)
            if isinstance(done, _Linear) and done.requant is not None and isinstance(nxt, _Linear):
                done.out_offset, done.out_int8 = nxt.offset, True
        self.input_offset = lo_v + 128 if hi_v - lo_v <= 255 else None
        #: the input type the first layer takes without a conversion: uint8 values ``q`` for
        #: :meth:`logits` (a oneDNN first layer) or int8 ``q − input_offset`` for
        #: :meth:`logits_offset`; ``None`` when the inputs take more than 256 values
        self.input_dtype: torch.dtype | None = None
        if self.input_offset is not None:
            first = next((s for s in self._steps if not isinstance(s, QFlatten)), None)
            u8 = isinstance(first, OnednnStep) and 0 <= lo_v and hi_v <= 255
            self.input_dtype = torch.uint8 if u8 else torch.int8
        check_executor(self, net, probes, "the int8 executor")

    # ------------------------------------------------------------------ construction
    def _onednn(
        self,
        layer: QLinear | QConv2d,
        in_bound: tuple[int, int],
        requant: QRequant | None,
        channel_last: tuple[int, ...] | None,
    ) -> OnednnStep | None:
        w = layer.int_weight()
        if channel_last is not None:  # input flattened from (H, W, C) memory: reorder the columns
            c, h, wd = channel_last
            w = w.view(w.shape[0], c, h, wd).permute(0, 2, 3, 1).reshape(w.shape[0], -1)
        lo, hi = in_bound
        if isinstance(layer, QConv2d) and any(layer.padding):
            lo, hi = min(lo, 0), max(hi, 0)
        step, why = onednn_step(layer, w, (lo, hi), requant)
        if step is None:
            self.notes.append(f"{layer!r}: oneDNN not used ({why})")
            return None
        self.onednn_layers += 1
        return step

    def _linear(
        self,
        layer: QLinear | QConv2d,
        in_bound: tuple[int, int],
        acc_bound: tuple[int, int],
        requant: QRequant | None,
        channel_last: tuple[int, ...] | None = None,
    ) -> _Linear | None:
        lo, hi = in_bound
        w = layer.int_weight()
        if channel_last is not None:  # input flattened from (H, W, C) memory: reorder the columns
            c, h, wd = channel_last
            w = w.view(w.shape[0], c, h, wd).permute(0, 2, 3, 1).reshape(w.shape[0], -1)
        conv = None
        if isinstance(layer, QConv2d):
            assert layer.out_shape is not None
            oh, ow = layer.out_shape[1], layer.out_shape[2]
            conv = _Im2col(layer.kernel_size, layer.stride, layer.padding, (oh, ow))
            w = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # out × (kh·kw·C), channel-last
            if any(layer.padding):  # the padding's true 0 must be representable too
                lo, hi = min(lo, 0), max(hi, 0)
        fan_in = w.shape[1]
        # torch 2.13's CPU _int_mm returns garbage for a fan-in of 1 (found by the check below):
        # such layers stay on the reference code
        if hi - lo > 255 or abs(lo) > 2**30 or not 2 <= fan_in <= _MAX_FAN_IN:
            return None
        if w.min() < -128 or w.max() > 127:
            return None
        offset = lo + 128
        corr = offset * w.sum(dim=1)
        b = layer.int_bias_acc()
        if b is not None:
            corr = corr + b
        shift = 0
        if requant is not None:
            assert requant.in_frac is not None
            shift = requant.in_frac - requant.format.frac
            # the compiled requantization works in int64: |acc| + 2**shift stays far below 2**63
            # (acc < 2**62 by the network's construction-time overflow check)
            if not 0 < shift < 62:
                requant = None
        parts = self._parts(w)
        if parts is None:
            self.notes.append(f"{layer!r}: torch's int8 product is not exact here; reference used")
            return None
        return _Linear(parts, offset, corr.to(torch.int64).contiguous(), requant, shift, conv)

    @staticmethod
    def _parts(w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]] | None:
        """The weight as one product if the kernel is exact on it, else as clamp(W, −64, 64) plus
        the residual on its nonzero rows (no int16 pair sum of a u8 × s8 kernel can saturate on
        weights within ±64), else None."""
        whole = w.to(torch.int8).contiguous().t()
        if _exact_products(w, whole):
            return [(whole, None)]
        main = w.clamp(-64, 64)
        rows = (w != main).any(dim=1).nonzero().squeeze(1)
        resid = (w - main)[rows]
        parts = [(main, None), (resid, rows)] if rows.numel() else [(main, None)]
        packed = [(p.to(torch.int8).contiguous().t(), r) for p, r in parts]
        if all(_exact_products(p, pt) for (p, _), (pt, _) in zip(parts, packed)):
            return packed
        return None

    # ------------------------------------------------------------------ execution
    @torch.no_grad()
    def logits(self, q: torch.Tensor) -> torch.Tensor:
        """Exact int64 logits of integer inputs ``q`` (N×input shape, inside the input range)."""
        return self._run(q, 0)

    @torch.no_grad()
    def logits_offset(self, a: torch.Tensor) -> torch.Tensor:
        """Exact int64 logits of the inputs ``a + input_offset`` given as int8 ``a``."""
        if self.input_offset is None or a.dtype != torch.int8:
            raise InputError("logits_offset takes int8 inputs of a network with ≤ 256 input levels")
        return self._run(a, self.input_offset)

    def _run(self, t: torch.Tensor, offset: int) -> torch.Tensor:
        for step in self._steps:
            if isinstance(step, _Linear | OnednnStep):
                t, offset = step(t, offset)
            elif isinstance(step, QFlatten):
                t = t.reshape(t.shape[0], -1)
            elif isinstance(step, _FlattenChannelLast):
                t = t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)
            else:
                t, offset = step.integer(t.to(torch.int64) + offset), 0
        return t.to(torch.int64) + offset
