"""Training-mode interval bound propagation: quantization-aware IBP (QA-IBP) for a
:class:`~qcert.quant.QNetwork`, and plain float IBP for a float ``nn.Sequential``.

Both are differentiable and meant for certified *training*; the certificates qcert prints come from
the exact int64 bounds of :mod:`qcert.bounds.exact`.

* :func:`qaibp_bounds` (Lechner et al., AAAI 2023, "Quantization-aware Interval Bound
  Propagation"): affine layers in center/radius form with the fake-quantized weights
  (``c' = Ŵc + b̂``, ``r' = |Ŵ|r``); every requantization (shift, round, saturate: all monotone) is
  applied to the lower and to the upper bound separately, with the clipped straight-through
  gradient of :func:`~qcert.quant.fake_requantize`; flatten and average pooling are linear. Run in
  float64 on a network whose :meth:`~qcert.quant.QNetwork.exact_in` holds and on an integer box,
  the bounds equal the exact int64 ones (times ``2**-frac``). In exact arithmetic they contain the
  output of every input in any box, also a real-valued training box ``x ± (ε + 0.1)``; in floating
  point that holds up to the rounding of the bound computation itself (a tie of the requantization
  can flip), which is why certificates use :mod:`qcert.bounds.exact`.
* :func:`float_ibp_bounds` (Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation
  for Training Verifiably Robust Models"): the same for a float network of Linear, Conv2d, ReLU,
  Flatten (and AvgPool2d, Dropout/Identity as the identity). Float bounds: they say nothing about
  the network once it is quantized.

Both fuse the last linear layer with the margin matrix ``C = [e_y - e_j]``: the lower bound of
``z_y - z_j`` is computed from ``(W_y - W_j)`` directly, tighter than subtracting logit bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qcert.errors import InputError
from qcert.quant.floatmodel.walker import leaves
from qcert.quant.format import round_float
from qcert.quant.inputs import check_box, check_labels
from qcert.quant.layers import QAvgPool2d, QConv2d, QFlatten, QLinear, QRequant
from qcert.quant.network import QNetwork


@dataclass
class IBPBounds:
    """Result of a training-mode bound computation.

    Attributes:
        margin_lb: B×K lower bounds of ``z_y - z_j`` in real logit units; column ``y`` is 0.
        widths: one scalar per hidden activation layer: the mean interval width (upper − lower,
            real units) over the batch and the layer's units (the QA-IBP width regulariser).
    """

    margin_lb: torch.Tensor
    widths: list[torch.Tensor]

    def certified(self, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample flag: every margin bound ``j ≠ y`` is positive (training-mode estimate only)."""
        lb = self.margin_lb.clone()
        lb[torch.arange(lb.shape[0]), labels] = float("inf")
        return (lb > 0).all(dim=1)


def _fused_margin(
    w: torch.Tensor,
    b: torch.Tensor | None,
    c: torch.Tensor,
    r: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Lower bounds of ``(W_y - W_j)·x + (b_y - b_j)`` over the box ``c ± r`` (B×K)."""
    wc = c @ w.t()  # B×K
    centre = wc.gather(1, labels.unsqueeze(1)) - wc
    cw = w[labels].unsqueeze(1) - w.unsqueeze(0)  # B×K×D
    radius = torch.einsum("bkd,bd->bk", cw.abs(), r)
    lb = centre - radius
    if b is not None:
        lb = lb + (b[labels].unsqueeze(1) - b.unsqueeze(0))
    return lb


def _zero_true_class(lb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask = F.one_hot(labels, lb.shape[1]).to(torch.bool)
    return lb.masked_fill(mask, 0.0)


def _input_box(
    net: QNetwork, lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    check_box(net, lo, hi, integer=False)
    rlo, rhi = net.input_range
    scale = 2.0**-net.input_format.frac
    lo = lo.to(dtype).clamp(rlo, rhi) * scale
    hi = hi.to(dtype).clamp(rlo, rhi) * scale
    return lo, hi


class _IntervalRequant(torch.autograd.Function):
    """Requantization of both bounds of an interval in one autograd node.

    Forward: exactly :func:`~qcert.quant.fake_requantize` (``ste=False`` values) applied to
    ``lo`` and to ``hi``. Backward: its clipped straight-through gradient, the identity where the
    rounded code lies in ``[qmin, qmax]`` and zero where it saturates, for each bound.
    """

    @staticmethod
    def forward(ctx, lo, hi, fmt, rounding):  # noqa: ANN001, ANN205
        out, masks = [], []
        for v in (lo, hi):
            r = round_float(v * (2.0**fmt.frac), rounding)  # the steps of fake_requantize
            masks.append((r >= fmt.qmin) & (r <= fmt.qmax))
            out.append(torch.clamp(r, fmt.qmin, fmt.qmax) * (2.0**-fmt.frac))
        ctx.save_for_backward(*masks)
        return out[0], out[1]

    @staticmethod
    def backward(ctx, g_lo, g_hi):  # noqa: ANN001, ANN205
        m_lo, m_hi = ctx.saved_tensors
        return g_lo * m_lo, g_hi * m_hi, None, None


def _qlayer_step(
    layer: torch.nn.Module, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(layer, QLinear | QConv2d):
        c, r = (hi + lo) * 0.5, (hi - lo) * 0.5
        w = layer.fake_weight(c.dtype)
        b = layer.fake_bias(c.dtype)
        if isinstance(layer, QLinear):
            c2, r2 = F.linear(c, w, b), F.linear(r, w.abs())
        else:
            c2 = F.conv2d(c, w, b, layer.stride, layer.padding)
            r2 = F.conv2d(r, w.abs(), None, layer.stride, layer.padding)
        return c2 - r2, c2 + r2
    if isinstance(layer, QRequant):
        return _IntervalRequant.apply(lo, hi, layer.format, layer.rounding)
    if isinstance(layer, QFlatten | QAvgPool2d):
        return layer.fake(lo), layer.fake(hi)
    raise InputError(f"QA-IBP does not support layer type {type(layer).__name__}")


def qaibp_interval_bounds(
    net: QNetwork, lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype = torch.float32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Real-valued (lower, upper) bounds of every layer's output over the input box ``[lo, hi]``
    (integer input units, clipped to the input range), propagated as QA-IBP does.

    In float64 on an integer box of a network with ``net.exact_in(torch.float64)``, layer ``i``'s
    bounds equal ``net.int_bounds(lo, hi)[i]`` times ``2**-frac``.
    """
    l, u = _input_box(net, lo, hi, dtype)
    out = []
    for layer in net.layers:
        l, u = _qlayer_step(layer, l, u)
        out.append((l, u))
    return out


def _fusable_last(layers: Sequence[nn.Module], linear_types: tuple[type, ...]) -> bool:
    return bool(layers) and isinstance(layers[-1], linear_types)


def qaibp_bounds(
    net: QNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    labels: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> IBPBounds:
    """QA-IBP margin lower bounds and hidden interval widths over input boxes (differentiable).

    Args:
        net: the quantized network (its fake-quant weights are used, with STE gradients).
        lo, hi: the box in integer input units (N×input_shape); may be real-valued (a training
            box ``x ± (ε + 0.1)``); clipped to ``net.input_range``.
        labels: the class each box must keep (N).
        dtype: float32 for training; float64 for bounds that match the exact ones.

    Returns:
        :class:`IBPBounds` with margin lower bounds in real logit units (``2**-logit_frac`` per
        integer step). When the network ends in a :class:`QLinear`, that layer is fused with the
        margin matrix; otherwise ``lb_j = lower(z_y) - upper(z_j)``.
    """
    labels = check_labels(net, labels, lo.shape[0], "boxes")
    layers = list(net.layers)
    fused = _fusable_last(layers, (QLinear,))
    body = layers[:-1] if fused else layers
    l, u = _input_box(net, lo, hi, dtype)
    widths = []
    for layer in body:
        l, u = _qlayer_step(layer, l, u)
        if isinstance(layer, QRequant):
            widths.append((u - l).mean())
    if fused:
        last = layers[-1]
        assert isinstance(last, QLinear)
        c, r = (u + l) * 0.5, (u - l) * 0.5
        lb = _fused_margin(last.fake_weight(dtype), last.fake_bias(dtype), c, r, labels)
    else:
        lb = l.gather(1, labels.unsqueeze(1)) - u
    return IBPBounds(_zero_true_class(lb, labels), widths)


# ---------------------------------------------------------------------- float IBP (Gowal et al.)
_FLOAT_IDENTITY = (nn.Dropout, nn.Identity)


def _float_step(
    m: nn.Module, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(m, nn.Linear | nn.Conv2d):
        c, r = (hi + lo) * 0.5, (hi - lo) * 0.5
        w = m.weight.to(c.dtype)
        b = None if m.bias is None else m.bias.to(c.dtype)
        if isinstance(m, nn.Linear):
            c2, r2 = F.linear(c, w, b), F.linear(r, w.abs())
        else:
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise InputError("float IBP supports Conv2d with groups=1 and numeric zero padding")
            c2 = F.conv2d(c, w, b, m.stride, m.padding, m.dilation)
            r2 = F.conv2d(r, w.abs(), None, m.stride, m.padding, m.dilation)
        return c2 - r2, c2 + r2
    if isinstance(m, nn.ReLU):
        return F.relu(lo), F.relu(hi)
    if isinstance(m, nn.Flatten | nn.AvgPool2d):
        return m(lo), m(hi)
    if isinstance(m, _FLOAT_IDENTITY):
        return lo, hi
    raise InputError(
        f"float IBP does not support {type(m).__name__}; use Linear, Conv2d, ReLU, Flatten, AvgPool2d"
    )


def float_ibp_bounds(
    model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, labels: torch.Tensor
) -> IBPBounds:
    """Float IBP (Gowal et al. 2018) margin lower bounds of a float ``nn.Sequential`` over real
    boxes ``[lo, hi]`` given in the model's own input units (differentiable).

    Sound for the float network in exact real arithmetic (up to float rounding); it is *not* a
    statement about a quantized version of the model. ``widths`` holds the mean width after each
    ReLU.
    """
    check_box(None, lo, hi, integer=False)
    layers = [m for _, m in leaves(model)]
    while layers and isinstance(layers[-1], _FLOAT_IDENTITY):
        layers = layers[:-1]
    fused = _fusable_last(layers, (nn.Linear,))
    body = layers[:-1] if fused else layers
    l, u = lo, hi
    widths = []
    for m in body:
        l, u = _float_step(m, l, u)
        if isinstance(m, nn.ReLU):
            widths.append((u - l).mean())
    if l.dim() != 2:
        raise InputError("the float model must end in a vector of logits")
    last_layer = layers[-1]
    num_classes = (
        last_layer.out_features if isinstance(last_layer, nn.Linear) and fused else l.shape[1]
    )
    labels = check_labels(int(num_classes), labels, lo.shape[0], "boxes")
    if fused:
        last = layers[-1]
        assert isinstance(last, nn.Linear)
        c, r = (u + l) * 0.5, (u - l) * 0.5
        b = None if last.bias is None else last.bias.to(c.dtype)
        lb = _fused_margin(last.weight.to(c.dtype), b, c, r, labels)
    else:
        lb = l.gather(1, labels.unsqueeze(1)) - u
    return IBPBounds(_zero_true_class(lb, labels), widths)


@torch.no_grad()
def float_ibp_certified(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    input_scale: float,
    input_range: tuple[float, float] = (0.0, 255.0),
    batch_size: int = 500,
) -> torch.Tensor:
    """Per-sample flag: float IBP (float64) proves the float model keeps ``labels`` on the L∞ box
    of radius ``eps`` input steps around ``x`` (clipped to ``input_range``), with a positive
    margin against every other class and a correct clean prediction.

    The model is evaluated on ``x * input_scale``. A float claim only: the quantized network may
    still be attackable.
    """
    model = model.eval()
    flags = []
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    m64 = _as_float64(model)
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size].to(torch.float64)
        yb = labels[s : s + batch_size]
        lo = (xb - eps).clamp(*input_range) * input_scale
        hi = (xb + eps).clamp(*input_range) * input_scale
        b = float_ibp_bounds(m64, lo, hi, yb)
        pred = m64(xb * input_scale).argmax(1)
        flags.append(b.certified(yb) & (pred == yb))
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def _as_float64(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(torch.float64)
