"""``QNetwork``: a sequence of quantized layers with one exact integer semantics.

``net(x)`` is the fake-quant float forward (for training, clipped straight-through gradients);
``net.integer_forward(x)`` is the reference executor (exact int64). Both take inputs in integer input
units (pixel levels); see docs/semantics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qcert.errors import FormatError, InputError
from qcert.quant.format import FixedPointFormat
from qcert.quant.inputs import check_box
from qcert.quant.layers import (
    QAvgPool2d,
    QConv2d,
    QFlatten,
    QGlobalSumPool,
    QLayer,
    QLinear,
    QMaxPool2d,
    QOffset,
    QRequant,
    QRescale,
    _Affine,
    input_quantize,
)

DEFAULT_INPUT_FORMAT = FixedPointFormat(bits=8, signed=False, frac=8)
#: the most values one sample's input or any layer's output may hold (2**26: 512 MiB as int64).
#: A larger shape is refused when the network is built, before any tensor of it is allocated, so
#: a small model file cannot make qcert try to allocate more than a machine holds.
MAX_SAMPLE_ELEMENTS = 1 << 26

#: float64 is exact for integers up to 2**53, float32 up to 2**24
FLOAT64_EXACT_BITS = 53
FLOAT32_EXACT_BITS = 24


def _check_size(what: str, shape: Sequence[int]) -> None:
    n = math.prod(shape)
    if n > MAX_SAMPLE_ELEMENTS:
        raise FormatError(
            f"{what} has shape {'×'.join(map(str, shape))}: {n} values per sample, more than "
            f"the limit of {MAX_SAMPLE_ELEMENTS} (2**26)"
        )


def argmax_first(logits: torch.Tensor) -> torch.Tensor:
    """Index of the largest logit per row; ties go to the smallest index."""
    best = logits.max(dim=1, keepdim=True).values
    idx = torch.arange(logits.shape[1], device=logits.device).expand_as(logits)
    big = torch.full_like(idx, logits.shape[1])
    return torch.where(logits == best, idx, big).min(dim=1).values


def _format_magnitude(layer: QLayer, mag: int) -> int:
    """Worst-case |output| of ``layer`` given worst-case |input| ``mag``, for any in-format weights."""
    if isinstance(layer, _Affine):
        wf = layer.weight_format
        fan_in = math.prod(layer.weight.shape[1:])
        out = fan_in * mag * max(-wf.qmin, wf.qmax)
        if layer.bias_format is not None:
            bf = layer.bias_format
            out += max(-bf.qmin, bf.qmax) << (layer.acc_frac - bf.frac)
        return out
    if isinstance(layer, QRequant | QRescale):
        return max(-layer.format.qmin, layer.format.qmax)
    if isinstance(layer, QAvgPool2d):
        return mag << layer.shift
    if isinstance(layer, QOffset):
        return mag + abs(layer.zero_point)
    if isinstance(layer, QGlobalSumPool):
        return mag * layer.area
    return mag


@dataclass(frozen=True)
class LayerInfo:
    """One row of :meth:`QNetwork.summary`."""

    index: int
    kind: str
    out_shape: tuple[int, ...]
    out_frac: int
    detail: str
    params: int


class QNetwork(nn.Module):
    """A quantized network: layers, input shape and format, input range and class names.

    Args:
        layers: the quantized layers, in order.
        input_shape: shape of one input without the batch dimension (C×H×W, or D).
        input_format: fixed-point format of the integer input (default unsigned 8 bits, frac 8:
            pixel level ``k`` stands for ``k/256``).
        input_range: the integer range inputs may take (default: the whole input format). Perturbed
            inputs are clipped to it.
        classes: class names (default ``"0"``, ``"1"``, ...).
        meta: free-form JSON-serialisable information saved with the model.
    """

    #: the layers, an ``nn.ModuleList`` of :class:`QLayer` (typed as what it holds)
    layers: Sequence[QLayer]

    def __init__(
        self,
        layers: Sequence[QLayer],
        input_shape: Sequence[int],
        input_format: FixedPointFormat = DEFAULT_INPUT_FORMAT,
        input_range: tuple[int, int] | None = None,
        classes: Sequence[str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not layers:
            raise FormatError("a network needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, QLayer):
                raise FormatError(f"layer {i} is a {type(layer).__name__}, not a qcert QLayer")
        if not 2 <= input_format.bits <= 16:
            raise FormatError(f"input bit width {input_format.bits} out of range 2..16")
        self.layers = nn.ModuleList(layers)  # type: ignore[assignment]
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or min(self.input_shape) < 1:
            raise FormatError(f"invalid input shape {tuple(input_shape)}")
        _check_size("the input", self.input_shape)
        self.input_format = input_format
        lo, hi = input_range if input_range is not None else (input_format.qmin, input_format.qmax)
        if not input_format.qmin <= int(lo) <= int(hi) <= input_format.qmax:
            raise FormatError(
                f"input range [{lo}, {hi}] is not inside the input format {input_format} "
                f"([{input_format.qmin}, {input_format.qmax}])"
            )
        self.input_range = (int(lo), int(hi))
        shape, frac = self.input_shape, input_format.frac
        mag = max(abs(lo), abs(hi))  # a bound on |value| that holds for any weights in format
        for i, layer in enumerate(self.layers):
            try:
                shape, frac = layer.bind(shape, frac, in_mag=mag)
                _check_size("its output", shape)
                mag = _format_magnitude(layer, mag)
            except FormatError as e:
                raise FormatError(f"layer {i} ({layer.kind}): {e}") from None
            if mag >= 1 << 62:
                raise FormatError(
                    f"layer {i} ({layer.kind}): its values could reach 2**{mag.bit_length() - 1} "
                    "and overflow int64; requantize earlier or use narrower formats"
                )
        if len(shape) != 1:
            raise FormatError(f"the network must end in a vector of logits, got shape {shape}")
        self.num_classes = shape[0]
        self.logit_frac = frac
        if classes is None:
            classes = [str(i) for i in range(self.num_classes)]
        if len(classes) != self.num_classes:
            raise FormatError(f"{len(classes)} class names for {self.num_classes} logits")
        self.classes = [str(c) for c in classes]
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ executions
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quant forward: inputs in integer units (float), returns real-valued logits.

        ``net(x) * 2**net.logit_frac == net.integer_forward(x)`` bit for bit when ``x`` is float64
        and :meth:`exact_in` says float64 is exact (see docs/semantics.md).
        """
        x = self._check_shape(x)
        if not x.is_floating_point():
            x = x.to(torch.float32)
        lo, hi = self.input_range
        v = input_quantize(x, lo, hi) * (2.0**-self.input_format.frac)
        for layer in self.layers:
            v = layer.fake(v)
        return v

    @torch.no_grad()
    def integer_forward(self, x: torch.Tensor, arith_path: str = "auto") -> torch.Tensor:
        """The reference executor: exact int64 logits (units ``2**-logit_frac``) of integer inputs.

        ``arith_path="int64"`` does every product in int64; ``"auto"`` (default) computes a linear or
        convolution product in float64 where a static bound proves every partial sum below 2**53
        (so the result is the same integers, faster), and in int64 otherwise. Rounding, saturation,
        biases and pooling are always int64.

        Raises :class:`InputError` for a wrong shape, a non-integer tensor or values outside
        ``input_range``.
        """
        if arith_path not in ("auto", "int64"):
            raise InputError(f"arith_path must be 'auto' or 'int64', got {arith_path!r}")
        q = self.check_input(x)
        for layer in self.layers:
            q = layer.integer(q, arith_path)
        return q

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices of integer inputs by the reference executor (ties to the smallest index)."""
        return argmax_first(self.integer_forward(x))

    # ------------------------------------------------------------------ input checks
    def _check_shape(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"expected a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.input_shape or x.dim() != len(self.input_shape) + 1:
            raise InputError(
                f"expected inputs of shape N×{'×'.join(map(str, self.input_shape))}, "
                f"got {tuple(x.shape)}"
            )
        if x.is_floating_point() and bool(torch.isnan(x).any()):
            raise InputError("input contains NaN")
        return x

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate integer inputs and return them as int64 (shape, dtype, whole numbers, range)."""
        x = self._check_shape(x)
        if x.is_floating_point():
            if not bool(torch.isfinite(x).all()) or not torch.equal(x, torch.round(x)):
                raise InputError("integer inputs expected: the float tensor has non-integer values")
        elif x.dtype == torch.bool or x.is_complex():
            raise InputError(f"integer inputs expected, got dtype {x.dtype}")
        lo, hi = self.input_range
        if x.numel() and (int(x.min()) < lo or int(x.max()) > hi):
            raise InputError(
                f"input values must lie in [{lo}, {hi}], got [{int(x.min())}, {int(x.max())}]"
            )
        return x.to(torch.int64)

    # ------------------------------------------------------------------ bounds and exactness
    @torch.no_grad()
    def int_bounds(
        self, lo: torch.Tensor, hi: torch.Tensor, upto: int | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Exact int64 interval bounds of every layer's output for the integer box ``[lo, hi]``.

        Each monotone step (affine map split by weight sign, rounding, saturation) is applied to
        both bounds; every integer input in the box has every intermediate value inside them.
        Returns one (lower, upper) pair per layer (up to layer ``upto``).
        """
        lo, hi = check_box(self, lo, hi)
        out = []
        for i, layer in enumerate(self.layers):
            if upto is not None and i >= upto:
                break
            lo, hi = layer.int_bounds(lo, hi)
            out.append((lo, hi))
        return out

    def accumulator_bits(self) -> int:
        """Bits needed for the largest magnitude any tensor can reach on the whole input range
        (plus a sign bit). Float64 is exact below 53, float32 below 24."""
        lo_v, hi_v = self.input_range
        lo = torch.full((1, *self.input_shape), lo_v, dtype=torch.int64)
        hi = torch.full((1, *self.input_shape), hi_v, dtype=torch.int64)
        m = max(lo_v, hi_v, -lo_v)
        for layer in self.layers:
            if isinstance(layer, _Affine):
                # the accumulator before the bias: bound |W||x| as well as the biased result
                w = layer.int_weight().abs()
                xm = torch.maximum(lo.abs(), hi.abs())
                m = max(m, int(layer._affine_int(xm, w).max()))
            lo, hi = layer.int_bounds(lo, hi)
            m = max(m, int(hi.max()), -int(lo.min()))
        return m.bit_length() + 1

    def exact_in(self, dtype: torch.dtype) -> bool:
        """True when the fake-quant forward in ``dtype`` provably equals the integer semantics."""
        limit = {torch.float64: FLOAT64_EXACT_BITS, torch.float32: FLOAT32_EXACT_BITS}.get(dtype)
        return limit is not None and self.accumulator_bits() <= limit

    # ------------------------------------------------------------------ description
    def affine_layers(self) -> list[QLinear | QConv2d]:
        return [m for m in self.layers if isinstance(m, QLinear | QConv2d)]

    def num_parameters(self) -> int:
        """Number of integer weights and biases."""
        n = 0
        for m in self.affine_layers():
            n += m.weight.numel() + (0 if m.bias is None else m.bias.numel())
        return n

    def weight_bytes(self) -> int:
        """Size of the packed integer weights and biases at their bit widths, in bytes."""
        bits = 0
        for m in self.affine_layers():
            bits += m.weight.numel() * m.weight_format.bits
            if m.bias is not None and m.bias_format is not None:
                bits += m.bias.numel() * m.bias_format.bits
        return (bits + 7) // 8

    def summary(self) -> list[LayerInfo]:
        rows = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, QLinear | QConv2d):
                detail = f"w {layer.weight_format}"
                if layer.bias_format is not None:
                    detail += f", b {layer.bias_format}"
                if isinstance(layer, QConv2d):
                    detail = (
                        f"k{layer.kernel_size[0]}x{layer.kernel_size[1]} "
                        f"s{layer.stride[0]} p{layer.padding[0]}, " + detail
                    )
                params = layer.weight.numel() + (0 if layer.bias is None else layer.bias.numel())
            elif isinstance(layer, QRequant):
                relu = "relu+sat" if not layer.format.signed else "sat"
                detail, params = f"{layer.format} {relu}, {layer.rounding.value}", 0
            elif isinstance(layer, QAvgPool2d):
                detail, params = f"k{layer.kernel_size} s{layer.stride}", 0
            elif isinstance(layer, QMaxPool2d):
                detail, params = f"k{layer.kernel_size} s{layer.stride} p{layer.padding}", 0
            elif isinstance(layer, QRescale):
                per = "per channel" if layer.channels > 1 else "per tensor"
                detail = f"{layer.format} zero point {layer.zero_point}, {layer.mode} {per}"
                params = 0
            elif isinstance(layer, QOffset):
                detail, params = f"− {layer.zero_point}", 0
            else:
                detail, params = "", 0
            assert layer.out_shape is not None and layer.out_frac is not None
            rows.append(LayerInfo(i, layer.kind, layer.out_shape, layer.out_frac, detail, params))
        return rows

    def extra_repr(self) -> str:
        return (
            f"input_shape={self.input_shape}, input_format={self.input_format}, "
            f"input_range={self.input_range}, classes={self.num_classes}"
        )


__all__ = ["QNetwork", "argmax_first", "DEFAULT_INPUT_FORMAT", "QFlatten"]
