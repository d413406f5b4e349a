"""Post-training conversion of a float ``nn.Sequential`` to a :class:`QNetwork`.

Power-of-two formats are chosen per tensor: each weight tensor gets the most fractional bits that
still hold its largest magnitude; each activation gets the most fractional bits that hold the
calibration range seen on the (already quantized) prefix of the network. Batch norm is folded into
the preceding affine layer, and the float model's input scaling is folded into the first one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from qcert.errors import FormatError
from qcert.quant.floatmodel.model import UNIT_INPUT_SCALE
from qcert.quant.floatmodel.walker import Step, plan
from qcert.quant.format import MAX_ABS_FRAC, FixedPointFormat, Rounding
from qcert.quant.layers import QAvgPool2d, QConv2d, QFlatten, QLayer, QLinear, QRequant
from qcert.quant.network import DEFAULT_INPUT_FORMAT, QNetwork


def frac_for(max_abs: float, bits: int, signed: bool) -> int:
    """Most fractional bits such that ``max_abs`` still fits ``bits`` (clamped to ±MAX_ABS_FRAC)."""
    qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if not math.isfinite(max_abs):
        raise FormatError(f"cannot choose a format for a non-finite range ({max_abs})")
    if max_abs <= 0:
        return min(MAX_ABS_FRAC, bits)
    f = math.floor(math.log2(qmax / max_abs))
    while f > -MAX_ABS_FRAC and round(max_abs * 2.0**f) > qmax:
        f -= 1
    while f < MAX_ABS_FRAC and round(max_abs * 2.0 ** (f + 1)) <= qmax:
        f += 1
    return max(-MAX_ABS_FRAC, min(MAX_ABS_FRAC, f))


def _per_layer(value: int | Sequence[int] | None, default: int, n: int, what: str) -> list[int]:
    if value is None:
        return [default] * n
    if isinstance(value, int):
        return [value] * n
    vals = list(value)
    if len(vals) != n:
        raise FormatError(f"{what}: {len(vals)} bit widths given for {n} layers")
    return vals


def _count_requants(steps: list[Step], nonneg_input: bool) -> int:
    """How many requantizations :func:`from_float` inserts (same state machine, no tensors)."""
    state, n = ("nonneg" if nonneg_input else "bounded"), 0
    for s in steps:
        kind = s.kind
        if kind == "affine":
            n += state == "acc"
            state = "acc"
        elif kind == "relu" and state != "nonneg":
            n, state = n + 1, "nonneg"
    return n


@torch.no_grad()
def from_float(
    module: nn.Module,
    calibration_images: torch.Tensor,
    bits: int = 8,
    *,
    weight_bits: int | Sequence[int] | None = None,
    act_bits: int | Sequence[int] | None = None,
    bias_bits: int = 32,
    input_scale: float = UNIT_INPUT_SCALE,
    input_format: FixedPointFormat = DEFAULT_INPUT_FORMAT,
    rounding: Rounding | str = Rounding.HALF_UP,
    percentile: float | None = None,
    classes: Sequence[str] | None = None,
) -> QNetwork:
    """Convert a float ``nn.Sequential`` (the layer set of :mod:`qcert.quant.floatmodel.walker`)
    to a QNetwork.

    Args:
        module: the float network; it is given inputs ``x_int * input_scale``.
        calibration_images: integer inputs (N×C×H×W or N×D, e.g. uint8 pixels) used to choose
            activation formats.
        bits: default bit width of weights and activations.
        weight_bits / act_bits: per-layer widths (one per affine layer / per requantization).
        bias_bits: bias width; biases sit at the accumulator's scale when they fit.
        input_scale: how the float model scaled integer inputs: ``UNIT_INPUT_SCALE`` (``x/255``,
            the default) or ``FLOAT_INPUT_SCALE`` (``x/256``, qcert's own float models); see
            :mod:`qcert.quant.floatmodel.model`.
        input_format: the integer input's format (default uint8 with 8 fractional bits).
        rounding: requantization rounding rule.
        percentile: clip activation ranges at this percentile (e.g. 99.99) instead of the max.
        classes: class names.

    The float model's ReLUs become unsigned requantizations (ReLU + saturation); two affine layers
    with nothing between them get a signed requantization; the last affine layer's accumulators are
    the logits. Unsupported layers raise :class:`FormatError` naming the layer.
    """
    module = module.eval()
    steps = plan(module)
    n_affine = sum(1 for s in steps if s.kind == "affine")
    n_requant = _count_requants(steps, input_format.qmin >= 0)
    wbits = _per_layer(weight_bits, bits, n_affine, "weight_bits")
    abits = _per_layer(act_bits, bits, n_requant, "act_bits")
    rounding = Rounding.parse(rounding)
    x = calibration_images
    if x.dim() < 2 or x.shape[0] < 1:
        raise FormatError("calibration_images must be a non-empty batch N×...")
    input_shape = tuple(x.shape[1:])
    fold = input_scale * 2.0**input_format.frac  # float model input = our real input * fold

    layers: list[QLayer] = []
    frac = input_format.frac
    shape: tuple[int, ...] = input_shape
    v = x.to(torch.float64) * 2.0**-input_format.frac  # real values of the quantized prefix
    # 'bounded' (requantized or input), 'nonneg' (bounded and ≥ 0), 'acc' (an accumulator)
    state = "nonneg" if input_format.qmin >= 0 else "bounded"
    first_affine, ai, ri = True, 0, 0

    def add(layer: QLayer) -> None:
        nonlocal shape, frac, v
        shape, frac = layer.bind(shape, frac)
        v = layer.fake(v)
        layers.append(layer)

    def requant(signed: bool, label: str) -> None:
        nonlocal ri
        vals = v.clamp(min=0) if not signed else v.abs()
        flat = vals.flatten()
        if percentile is not None:
            if not 0 < percentile <= 100:
                raise FormatError(f"percentile must be in (0, 100], got {percentile}")
            flat = flat[:: max(1, flat.numel() // 4_000_000)]  # torch.quantile's size limit
            hi = float(torch.quantile(flat.float(), percentile / 100.0))
        else:
            hi = float(flat.max())
        try:
            fmt = FixedPointFormat(abits[ri], signed, frac_for(hi, abits[ri], signed))
            add(QRequant(fmt, rounding))
        except FormatError as e:
            raise FormatError(f"{label}: {e}") from None
        ri += 1

    for step in steps:
        kind, label, m = step.kind, step.label, step.module
        if kind == "affine":
            if state == "acc":
                requant(True, label)
            w, b = step.params()
            if first_affine:
                w = w * fold
                first_affine = False
            wf = FixedPointFormat(wbits[ai], True, frac_for(float(w.abs().max()), wbits[ai], True))
            bf = None
            if b is not None:
                acc_frac = frac + wf.frac
                bf = FixedPointFormat(
                    bias_bits, True, min(acc_frac, frac_for(float(b.abs().max()), bias_bits, True))
                )
            try:
                if isinstance(m, nn.Linear):
                    layer: QLayer = QLinear(w, b, wf, bf)
                else:
                    layer = QConv2d(w, b, wf, bf, m.stride, m.padding)  # type: ignore[arg-type]
                add(layer)
            except FormatError as e:
                raise FormatError(f"{label}: {e}") from None
            state, ai = "acc", ai + 1
        elif kind == "relu":
            if state != "nonneg":
                requant(False, label)
                state = "nonneg"
        elif kind == "flatten":
            add(QFlatten())
        else:
            assert isinstance(m, nn.AvgPool2d)
            try:
                add(QAvgPool2d(m.kernel_size, m.stride))
            except FormatError as e:
                raise FormatError(f"{label}: {e}") from None
    return QNetwork(layers, input_shape, input_format, classes=classes)


def to_float(net: QNetwork) -> nn.Sequential:
    """The float twin of a QNetwork: the same dequantized weights in float32 with plain ReLUs.

    Unsigned requantizations become ``ReLU`` (no rounding, no saturation), signed ones disappear,
    average pooling stays. It takes real inputs ``x_int * 2**-input_format.frac`` and returns real
    logits. This is the *float* network of the same architecture (e.g. the baseline of float
    randomized smoothing); it makes no claim about the integer semantics.
    """
    mods: list[nn.Module] = []
    for layer in net.layers:
        if isinstance(layer, QLinear | QConv2d):
            w = (layer.int_weight().to(torch.float64) * 2.0**-layer.weight_format.frac).float()
            b = layer.int_bias()
            if isinstance(layer, QLinear):
                m: nn.Linear | nn.Conv2d = nn.Linear(
                    layer.in_features, layer.out_features, bias=b is not None
                )
            else:
                m = nn.Conv2d(
                    layer.in_channels,
                    layer.out_channels,
                    layer.kernel_size,
                    layer.stride,
                    layer.padding,
                    bias=b is not None,
                )
            with torch.no_grad():
                m.weight.copy_(w)
                if b is not None:
                    assert layer.bias_format is not None and m.bias is not None
                    m.bias.copy_((b.to(torch.float64) * 2.0**-layer.bias_format.frac).float())
            mods.append(m)
        elif isinstance(layer, QRequant):
            if not layer.format.signed:
                mods.append(nn.ReLU())
        elif isinstance(layer, QAvgPool2d):
            mods.append(nn.AvgPool2d(layer.kernel_size, layer.stride))
        elif isinstance(layer, QFlatten):
            mods.append(nn.Flatten())
    return nn.Sequential(*mods).eval()
