"""The selection metric: a Lipschitz bound on how far quantization moves the logits, in the ε-ball.

For a ReLU network ``F`` with affine layers ``W_l, b_l`` (l = 1..L) and its quantization ``Q``
(weights ``Ŵ_l = W_l + ΔW_l``, requantized activations ``â_l = σ(ẑ_l) + e_l``), for every input
``x'`` (docs/layerwise.md, Proposition 1):

    ‖Q(x') − F(x')‖ ≤ Σ_l L_{>l} · ( ‖ΔW_l‖ · ‖â_{l−1}(x')‖ + ‖Δb_l‖ + ‖e_l(x')‖ ),

with ``L_{>l} = Π_{k>l} ‖W_k‖`` the float network's downstream Lipschitz bound (``e_L = 0``: the
logits are not requantized). Adding ``‖F(x') − F(x)‖ ≤ L_F ‖x' − x‖`` bounds the logit deviation of
an input perturbation plus quantization. The search minimises the mean of the right-hand side over
calibration points ``x'`` that are clean inputs *and* PGD points of the float model at radius ε
(where an attacker puts them), estimating ``‖â_{l−1}‖`` and ``e_l`` with the float network's
activations. The terms separate per layer, so the search is an exact knapsack (``search.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from qcert.errors import FormatError, InputError
from qcert.layerwise.lipschitz import AffineOp, operator_norm
from qcert.quant.convert import frac_for
from qcert.quant.floatmodel import FloatModel, Step, plan
from qcert.quant.format import MAX_ABS_FRAC, FixedPointFormat, Rounding, fake_requantize
from qcert.quant.layers import quantize_weight
from qcert.quant.network import DEFAULT_INPUT_FORMAT, QNetwork

#: the fixed-point input of every quantized network built here (the default uint8 input):
#: pixel level k stands for k · 2**-INPUT_FRAC = k · FLOAT_INPUT_SCALE
INPUT_FRAC = DEFAULT_INPUT_FORMAT.frac
#: how many fractional-bit choices past the no-clipping one the search tries (clipping ranges)
EXTRA_FRACS = 4


@dataclass
class LayerProfile:
    """What the metric needs to know about affine layer ``index`` (weights with the input scale
    folded in, so every layer acts on real values and the network's input is ``x_int / 256``).

    ``z`` holds the layer's float outputs on the calibration points (None for the logit layer);
    ``relu`` says whether a ReLU follows (unsigned requantization) or a signed one; ``in_norm`` is
    the mean norm of the layer's input on the calibration points; ``lip`` is ``‖W_l‖`` and
    ``lip_after`` is ``Π_{k>l} ‖W_k‖`` in ``norm``; ``clean`` marks which rows of ``z`` are clean
    inputs (the rest are PGD points); ``inputs`` keeps the layer's inputs on those points when the
    profile was made with ``keep_inputs`` (for the data-dependent weight term).
    """

    index: int
    op: AffineOp
    bias: torch.Tensor | None
    relu: bool
    z: torch.Tensor | None
    clean: torch.Tensor
    in_norm: float
    lip: float
    lip_after: float
    norm: str
    inputs: torch.Tensor | None = None

    @property
    def params(self) -> int:
        return int(self.op.weight.numel())

    @property
    def is_last(self) -> bool:
        return self.z is None


def _vec_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.reshape(t.shape[0], -1)
    return flat.norm(dim=1) if norm == "2" else flat.abs().amax(dim=1)


def steps_of(model: FloatModel) -> list[Step]:
    """The float model's steps (:func:`qcert.quant.floatmodel.plan`) as layer-wise quantization
    takes them: no pooling, and no ReLU before the first affine layer."""
    steps = plan(model.module)
    for s in steps:
        if s.kind == "pool":
            raise FormatError(f"{s.label} is not supported by layer-wise quantization")
    if steps and steps[0].kind == "relu":
        raise FormatError("a ReLU before the first affine layer is not supported")
    return steps


def folded_weights(model: FloatModel) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Each affine layer's (weight, bias) in float64, the first weight scaled so the network acts
    on ``x_int / 256`` (``input_scale * 256`` folded in, as :func:`qcert.quant.from_float` does)."""
    fold = model.input_scale * 2.0**INPUT_FRAC
    out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for s in steps_of(model):
        if s.kind == "affine":
            w, b = s.params()
            out.append((w * fold if not out else w, b))
    return out


@torch.no_grad()
def profile(
    model: FloatModel,
    calib: torch.Tensor,
    clean: torch.Tensor | None = None,
    norm: str = "2",
    keep_inputs: bool = False,
) -> list[LayerProfile]:
    """Per-layer statistics of the float model on calibration inputs ``calib`` (integer units,
    N×input_shape; ``clean`` marks the clean rows, default all) for the metric in ``norm``."""
    if norm not in ("2", "inf"):
        raise InputError(f"norm must be '2' or 'inf', got {norm!r}")
    if calib.dim() < 2 or calib.shape[0] == 0:
        raise InputError("calibration inputs must be a non-empty batch")
    if tuple(calib.shape[1:]) != model.input_shape:
        raise InputError(
            f"calibration inputs of shape {tuple(calib.shape[1:])}, the model expects "
            f"{model.input_shape}"
        )
    if calib.is_floating_point() and not bool(torch.isfinite(calib).all()):
        raise InputError("calibration inputs contain NaN or infinity")
    clean_mask = (
        torch.ones(calib.shape[0], dtype=torch.bool) if clean is None else clean.to(torch.bool)
    )
    steps = steps_of(model)
    weights = folded_weights(model)
    v = calib.to(torch.float64) * 2.0**-INPUT_FRAC
    shape = model.input_shape
    ops: list[AffineOp] = []
    zs: list[torch.Tensor | None] = []
    relus: list[bool] = []
    in_norms: list[float] = []
    inputs: list[torch.Tensor | None] = []
    ai = 0
    for si, step in enumerate(steps):
        kind, m = step.kind, step.module
        if kind == "affine":
            w, b = weights[ai]
            if isinstance(m, nn.Conv2d):
                op = AffineOp(w, shape, tuple(m.stride), tuple(m.padding))  # type: ignore[arg-type]
            else:
                op = AffineOp(w, shape)
            in_norms.append(float(_vec_norm(v, norm).mean()))
            inputs.append(v.to(torch.float32) if keep_inputs else None)
            v = op.apply(v)
            if b is not None:
                v = v + b.view(1, -1, *([1] * (v.dim() - 2)))
            shape = op.out_shape
            ops.append(op)
            is_last = not any(t.kind == "affine" for t in steps[si + 1 :])
            nxt = next((t.kind for t in steps[si + 1 :] if t.kind != "flatten"), None)
            relus.append(nxt == "relu")
            zs.append(None if is_last else v.to(torch.float32))
            ai += 1
        elif kind == "relu":
            v = v.clamp(min=0)
        else:
            v = v.flatten(1)
            shape = (math.prod(shape),)
    lips = [operator_norm(op, norm) for op in ops]
    return [
        LayerProfile(
            index=i,
            op=ops[i],
            bias=weights[i][1],
            relu=relus[i],
            z=zs[i],
            clean=clean_mask,
            in_norm=in_norms[i],
            lip=lips[i],
            lip_after=math.prod(lips[i + 1 :]),
            norm=norm,
            inputs=inputs[i],
        )
        for i in range(len(ops))
    ]


def weight_fracs(w: torch.Tensor, bits: int, extra: int = EXTRA_FRACS) -> list[int]:
    """Candidate fractional bits of a signed ``bits``-wide weight format: the most that hold
    ``max|w|`` without clipping, and up to ``extra`` more (finer steps, clipping the largest)."""
    f0 = frac_for(float(w.abs().max()), bits, True)
    return sorted({min(MAX_ABS_FRAC, f0 + k) for k in range(extra + 1)})


def act_fracs(z: torch.Tensor, bits: int, signed: bool, extra: int = EXTRA_FRACS) -> list[int]:
    """Candidate fractional bits of an activation format for calibration values ``z``."""
    hi = float(z.abs().max()) if signed else float(z.clamp(min=0).max())
    f0 = frac_for(hi, bits, signed)
    return sorted({min(MAX_ABS_FRAC, f0 + k) for k in range(extra + 1)})


def quantized_weight(w: torch.Tensor, fmt: FixedPointFormat) -> torch.Tensor:
    """The real values of the integer weight codes (round half to even, saturate), as QLinear /
    QConv2d store them."""
    return quantize_weight(w.to(torch.float64), fmt) * 2.0**-fmt.frac


def weight_error(p: LayerProfile, fmt: FixedPointFormat) -> torch.Tensor:
    """``ΔW = Ŵ − W`` of layer ``p`` at weight format ``fmt``."""
    return quantized_weight(p.op.weight, fmt) - p.op.weight


def weight_error_norm(p: LayerProfile, fmt: FixedPointFormat) -> float:
    """``‖ΔW‖``: the operator norm (in ``p.norm``) of the weight rounding error on the layer's
    actual input shape."""
    return operator_norm(p.op, p.norm, weight_error(p, fmt))


@torch.no_grad()
def weight_error_data(p: LayerProfile, fmt: FixedPointFormat) -> float:
    """``E‖ΔW a‖`` over the calibration inputs ``a`` of layer ``p`` (needs ``keep_inputs``): the
    data-dependent weight term, never larger than ``‖ΔW‖ · E‖a‖``."""
    if p.inputs is None:
        raise InputError("the profile was made without keep_inputs")
    dw = weight_error(p, fmt)
    total = 0.0
    for s in range(0, p.inputs.shape[0], 256):
        total += float(
            _vec_norm(p.op.apply(p.inputs[s : s + 256].to(torch.float64), dw), p.norm).sum()
        )
    return total / p.inputs.shape[0]


def act_error(
    p: LayerProfile,
    fmt: FixedPointFormat,
    rounding: Rounding | str = Rounding.HALF_UP,
    rows: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Requantization error ``e = Q(z) − σ(z)`` of layer ``p``'s output at format ``fmt`` on the
    calibration points (``rows`` selects some): (mean per-point norm ``‖e‖``, mean square)."""
    if p.z is None:
        raise InputError(f"layer {p.index} produces the logits: it has no requantization")
    z = p.z if rows is None else p.z[rows]
    norms, sq, n = 0.0, 0.0, 0
    for s in range(0, z.shape[0], 256):
        zb = z[s : s + 256].to(torch.float64)
        target = zb.clamp(min=0) if p.relu else zb
        e = fake_requantize(zb, fmt, rounding, ste=False) - target
        norms += float(_vec_norm(e, p.norm).sum())
        sq += float((e * e).sum())
        n += e.numel()
    return norms / max(1, z.shape[0]), sq / max(1, n)


@torch.no_grad()
def float_forward64(model: FloatModel, x_int: torch.Tensor) -> torch.Tensor:
    """The float model's logits in float64 on integer-unit inputs (via the folded weights)."""
    weights = folded_weights(model)
    v = x_int.to(torch.float64) * 2.0**-INPUT_FRAC
    ai = 0
    for step in steps_of(model):
        kind, m = step.kind, step.module
        if kind == "affine":
            w, b = weights[ai]
            if isinstance(m, nn.Conv2d):
                v = torch.nn.functional.conv2d(v, w, b, m.stride, m.padding)
            else:
                v = torch.nn.functional.linear(v, w, b)
            ai += 1
        elif kind == "relu":
            v = v.clamp(min=0)
        else:
            v = v.flatten(1)
    return v


@torch.no_grad()
def deviation_bound(
    model: FloatModel, net: QNetwork, x_int: torch.Tensor, norm: str = "2"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input: (the bound of Proposition 1 on ``‖Q(x) − F(x)‖``, the actual deviation).

    The bound is evaluated with the quantized network's own activations ``â_{l−1}`` and
    requantization errors ``e_l`` from the reference executor, ``ΔW_l``, ``Δb_l`` from its integer
    weights and biases, and the float network's operator norms (``‖ΔW_l‖`` by power iteration for a
    convolution: an estimate from below). ``net`` must be a quantization of ``model`` by
    :func:`qcert.layerwise.build.quantize_with_formats` or :func:`qcert.quant.from_float` (affine,
    requant and flatten layers in the same order)."""
    from qcert.quant.layers import QConv2d, QFlatten, QLinear, QRequant

    if norm not in ("2", "inf"):
        raise InputError(f"norm must be '2' or 'inf', got {norm!r}")
    profiles = profile(model, x_int[:1], None, norm)
    q = net.check_input(x_int)
    frac = net.input_format.frac
    bound = torch.zeros(q.shape[0], dtype=torch.float64)
    ai = 0
    for layer in net.layers:
        if isinstance(layer, QLinear | QConv2d):
            if ai >= len(profiles):
                raise InputError("the QNetwork has more affine layers than the float model")
            p = profiles[ai]
            a_hat = q.to(torch.float64) * 2.0**-frac
            w_hat = layer.int_weight().to(torch.float64) * 2.0**-layer.weight_format.frac
            dw = operator_norm(p.op, norm, w_hat - p.op.weight)
            db = 0.0
            if p.bias is not None or layer.bias is not None:
                b_hat = torch.zeros(p.op.out_shape[0], dtype=torch.float64)
                if layer.bias is not None:
                    b_int = layer.int_bias()
                    assert b_int is not None and layer.bias_format is not None
                    b_hat = b_int.to(torch.float64) * 2.0**-layer.bias_format.frac
                b = p.bias if p.bias is not None else torch.zeros_like(b_hat)
                full = (b_hat - b).view(1, -1, *([1] * (len(p.op.out_shape) - 1)))
                db = float(_vec_norm(full.expand(1, *p.op.out_shape), norm)[0])
            bound += p.lip_after * (dw * _vec_norm(a_hat, norm) + db)
            q = layer.integer(q)
            frac = layer.acc_frac
            ai += 1
        elif isinstance(layer, QRequant):
            z_hat = q.to(torch.float64) * 2.0**-frac
            q = layer.integer(q)
            frac = layer.format.frac
            target = z_hat if layer.format.signed else z_hat.clamp(min=0)
            e = q.to(torch.float64) * 2.0**-frac - target
            bound += profiles[ai - 1].lip_after * _vec_norm(e, norm)
        elif isinstance(layer, QFlatten):
            q = q.flatten(1)
        else:
            raise InputError(f"{layer.kind} layers are not covered by the bound")
    if ai != len(profiles):
        raise InputError("the QNetwork and the float model have different affine layers")
    actual = _vec_norm(q.to(torch.float64) * 2.0**-frac - float_forward64(model, x_int), norm)
    return bound, actual


__all__ = [
    "EXTRA_FRACS",
    "INPUT_FRAC",
    "LayerProfile",
    "act_error",
    "act_fracs",
    "deviation_bound",
    "float_forward64",
    "folded_weights",
    "profile",
    "quantized_weight",
    "steps_of",
    "weight_error",
    "weight_error_data",
    "weight_error_norm",
    "weight_fracs",
]
