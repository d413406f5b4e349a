"""Build a :class:`~qcert.quant.QNetwork` from a float model and explicit per-layer formats.

Unlike :func:`qcert.quant.from_float`, which takes every fractional bit count from a calibration
maximum, this takes the weight and activation formats as given (chosen clipping ranges). The
semantics is the same: the input is uint8 with 8 fractional bits (pixel ``k`` is
``k · FLOAT_INPUT_SCALE = k/256``; the float model's ``input_scale / FLOAT_INPUT_SCALE`` is folded
into the first layer), weights are rounded half to
even and saturated, biases are 32-bit at the accumulator's scale (or coarser if they need the
range), a ReLU becomes an unsigned requantization, two affine layers without a ReLU between them get
a signed one, and the last affine layer's accumulators are the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from qcert.errors import FormatError
from qcert.layerwise.metric import INPUT_FRAC, folded_weights, steps_of
from qcert.quant.convert import frac_for
from qcert.quant.floatmodel import FloatModel
from qcert.quant.format import FixedPointFormat, Rounding
from qcert.quant.layers import QConv2d, QFlatten, QLayer, QLinear, QRequant
from qcert.quant.network import DEFAULT_INPUT_FORMAT, QNetwork

BIAS_BITS = 32


def quantize_with_formats(
    model: FloatModel,
    weight_formats: Sequence[FixedPointFormat],
    act_formats: Sequence[FixedPointFormat],
    rounding: Rounding | str = Rounding.HALF_UP,
    meta: dict | None = None,
) -> QNetwork:
    """The QNetwork of ``model`` with weight format ``weight_formats[l]`` for affine layer ``l``
    and activation format ``act_formats[l]`` for the requantization after it (one per affine layer
    but the last; its ``signed`` flag is overridden: unsigned before a ReLU, signed otherwise)."""
    rounding = Rounding.parse(rounding)
    steps = steps_of(model)
    weights = folded_weights(model)
    if len(weight_formats) != len(weights):
        raise FormatError(f"{len(weight_formats)} weight formats for {len(weights)} affine layers")
    if len(act_formats) != len(weights) - 1:
        raise FormatError(
            f"{len(act_formats)} activation formats for {len(weights) - 1} requantizations"
        )
    layers: list[QLayer] = []
    frac, ai = INPUT_FRAC, 0
    pending: FixedPointFormat | None = None  # the activation format after the last affine layer
    for step in steps:
        kind, m = step.kind, step.module
        if kind == "affine":
            if pending is not None:  # affine directly after affine: signed requantization
                fmt = FixedPointFormat(pending.bits, True, pending.frac)
                layers.append(QRequant(fmt, rounding))
                frac, pending = fmt.frac, None
            w, b = weights[ai]
            wf = weight_formats[ai]
            if not wf.signed:
                raise FormatError(f"affine layer {ai}: weight formats must be signed")
            bf = None
            if b is not None:
                acc = frac + wf.frac
                bf = FixedPointFormat(
                    BIAS_BITS, True, min(acc, frac_for(float(b.abs().max()), BIAS_BITS, True))
                )
            if isinstance(m, nn.Conv2d):
                layers.append(QConv2d(w, b, wf, bf, tuple(m.stride), tuple(m.padding)))  # type: ignore[arg-type]
            else:
                layers.append(QLinear(w, b, wf, bf))
            frac = frac + wf.frac
            pending = act_formats[ai] if ai < len(act_formats) else None
            ai += 1
        elif kind == "relu":
            if pending is None:
                if ai == len(weights):
                    raise FormatError("a ReLU after the last affine layer is not supported")
                continue  # a second ReLU in a row: the unsigned requantization already clamps
            fmt = FixedPointFormat(pending.bits, False, pending.frac)
            layers.append(QRequant(fmt, rounding))
            frac, pending = fmt.frac, None
        else:
            layers.append(QFlatten())
    shape = model.input_shape
    return QNetwork(layers, shape, DEFAULT_INPUT_FORMAT, classes=model.classes, meta=meta or {})


__all__ = ["BIAS_BITS", "quantize_with_formats"]
