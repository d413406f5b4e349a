"""Linear-relaxation bounds of the integer network (CROWN/DeepPoly-style backward propagation
through qcert's exact semantics), with a rigorous bound on their floating-point error.

Every requantization unit ``y = clamp(R(z · 2^-s), qmin, qmax)`` (``R`` the rounding rule, ``z``
an integer accumulator known to lie in ``[l, u]``) is bounded by two lines ``aL z + bL <= y <= aU z
+ bU``. The slopes are free (chords of the exact staircase by default, optimized by gradient in
:mod:`qcert.verify.optimize`); the intercepts are computed *for the slope at hand* so that the line
is valid at every integer ``z`` in ``[l, u]``:

* at ``z = l`` and ``z = u`` from the exact staircase values;
* inside, from the sandwich ``clamp(z 2^-s - dL) <= y <= clamp(z 2^-s + dU)``, where ``dL, dU``
  bound the rounding error of the rule (half up: ``R(v) ∈ [v - 1/2 + 2^-s, v + 1/2]``; half even:
  ``[v - 1/2, v + 1/2]``; floor: ``[v - 1 + 2^-s, v]``; no rounding for a left shift); the extreme
  of a piecewise-linear function minus a line lies at an end or a kink, so four candidates suffice.

Linear layers, flatten and power-of-two average pooling are exact linear maps; the
specification's rows are propagated backward from the output, each split constraint
``l_i <= z_i <= u_i`` of a subproblem enters with a Lagrange multiplier ``beta >= 0`` (β-CROWN), and
the input box closes the bound.

Soundness does not rest on floating-point luck. Every bound that is used runs in float64 (the
optimizer's intermediate steps may run in float32, without error term, but their values only steer
the parameters: see :meth:`LinearBounds.backward`), and the bound carries an
error term from the magnitudes of what was summed (Higham, *Accuracy and Stability of Numerical
Algorithms*, §3.1): a float dot product of ``n`` terms errs by at most ``γ_n Σ|a_i b_i|``,
``γ_n = n u / (1 - n u)``. The backward pass never needs its coefficients to be exact: whatever
float vector ``λ`` it holds, ``λ · v`` is bounded exactly in terms of the next variable, and the
difference between the float product and the exact one is charged to the error term, using
magnitude bounds of every intermediate tensor over the whole input range. Intercepts get their own
rounding slack. The result is an upper bound ``UB + E`` on every integer point's value; since spec
rows have integer values, a row is proved when ``UB + E < b``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qcert.errors import InputError
from qcert.quant.format import Rounding
from qcert.quant.layers import QAvgPool2d, QConv2d, QFlatten, QLinear, QRequant
from qcert.quant.network import QNetwork

#: the layers :class:`LinearBounds` (and the MILP, which takes its bounds) encode; networks with
#: other layers (rescale, offset, max-pool, global sum pool: deployed int8 models) are verified
#: by ``bab``, whose exact interval bounds need only each layer's monotone ``int_bounds``
LINEAR_LAYERS = (QLinear, QConv2d, QRequant, QFlatten, QAvgPool2d)

U = 2.0**-53  # unit roundoff of float64
F64 = torch.float64
F32 = torch.float32


def gamma(n: int) -> float:
    """``γ_n`` of Higham (twice over, for safety margins on the bound's own computation)."""
    nu = (n + 2) * U
    return 2.0 * nu / (1.0 - nu)


@dataclass
class _LinOp:
    """An exact linear map between flat vectors: ``out = M · in + bias`` (integers)."""

    kind: str  # "linear" | "conv" | "pool"
    weight: torch.Tensor | None  # float64 (linear: out×in; conv: Cout×Cin×kh×kw)
    bias: torch.Tensor | None  # float64 flat (out), or None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    mag: torch.Tensor  # float64 flat (out): Σ|M||in| + |bias| over the whole input range
    fan: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    kernel: tuple[int, int] = (1, 1)
    weight32: torch.Tensor | None = None  # float32 copies for the optimizer's (non-rigorous)
    bias32: torch.Tensor | None = None  # passes, see LinearBounds.backward

    def __post_init__(self) -> None:
        self.weight32 = None if self.weight is None else self.weight.to(F32)
        self.bias32 = None if self.bias is None else self.bias.to(F32)

    def back(self, lam: torch.Tensor) -> torch.Tensor:
        """``lam · M`` for ``lam`` of shape N×out (float64, or float32 for a non-rigorous pass):
        N×in."""
        n = lam.shape[0]
        weight = self.weight if lam.dtype == F64 else self.weight32
        if self.kind == "linear":
            assert weight is not None
            return lam @ weight
        c, h, w = self.in_shape
        oc, oh, ow = self.out_shape
        kh, kw = self.kernel
        op = (
            h - ((oh - 1) * self.stride[0] - 2 * self.padding[0] + kh),
            w - ((ow - 1) * self.stride[1] - 2 * self.padding[1] + kw),
        )
        x = lam.reshape(n, oc, oh, ow)
        with torch.backends.nnpack.flags(enabled=False):
            if self.kind == "conv":
                assert weight is not None
                r = F.conv_transpose2d(x, weight, None, self.stride, self.padding, op)
            else:
                ones = torch.ones(c, 1, kh, kw, dtype=lam.dtype)
                r = F.conv_transpose2d(x, ones, None, self.stride, 0, op, groups=c)
        return r.reshape(n, -1)


@dataclass
class _Unit:
    """A requantization layer: its shift, output range and rounding slack."""

    index: int  # position in net.layers
    layer: QRequant
    size: int
    scale: float  # 2^-s (exact)
    qmin: float
    qmax: float
    d_lo: float  # R(v) >= v - d_lo
    d_hi: float  # R(v) <= v + d_hi


class LinearBounds:
    """Backward linear bound propagation for one network (build once, reuse for every query).

    The network is cut into segments of exact linear maps between requantization layers; the
    last segment may be empty (requantized logits) or end at the raw logits.
    """

    def __init__(self, net: QNetwork) -> None:
        self.net = net
        shapes = [tuple(net.input_shape)] + [tuple(i.out_shape) for i in net.summary()]
        lo_v, hi_v = net.input_range
        full_lo = torch.full((1, *net.input_shape), lo_v, dtype=torch.int64)
        full_hi = torch.full((1, *net.input_shape), hi_v, dtype=torch.int64)
        mags = [torch.maximum(full_lo.abs(), full_hi.abs()).to(F64).reshape(-1)]
        for l, u in net.int_bounds(full_lo, full_hi):
            mags.append(torch.maximum(l.abs(), u.abs()).to(F64).reshape(-1))
        self.in_mag = mags[0]
        self.segments: list[list[_LinOp]] = [[]]
        self.units: list[_Unit] = []
        for i, layer in enumerate(net.layers):
            in_shape, out_shape, m_in = shapes[i], shapes[i + 1], mags[i]
            if isinstance(layer, QLinear):
                w = layer.int_weight().to(F64)
                b = layer.int_bias_acc()
                bf = None if b is None else b.to(F64)
                mag = w.abs() @ m_in + (0 if bf is None else bf.abs())
                self.segments[-1].append(
                    _LinOp("linear", w, bf, in_shape, out_shape, mag, int(w.shape[1]))
                )
            elif isinstance(layer, QConv2d):
                w = layer.int_weight().to(F64)
                b = layer.int_bias_acc()
                bf = None
                with torch.backends.nnpack.flags(enabled=False):
                    mag = F.conv2d(
                        m_in.reshape(1, *in_shape), w.abs(), None, layer.stride, layer.padding
                    )
                if b is not None:
                    hw = out_shape[1] * out_shape[2]
                    bf = b.to(F64).repeat_interleave(hw)
                    mag = mag.reshape(-1) + bf.abs()
                op = _LinOp(
                    "conv",
                    w,
                    bf,
                    in_shape,
                    out_shape,
                    mag.reshape(-1),
                    int(math.prod(w.shape[1:])),
                    (layer.stride[0], layer.stride[1]),
                    (layer.padding[0], layer.padding[1]),
                    (layer.kernel_size[0], layer.kernel_size[1]),
                )
                self.segments[-1].append(op)
            elif isinstance(layer, QAvgPool2d):
                kh, kw = layer.kernel_size
                mag = layer.integer(m_in.reshape(1, *in_shape)).reshape(-1)
                self.segments[-1].append(
                    _LinOp(
                        "pool",
                        None,
                        None,
                        in_shape,
                        out_shape,
                        mag,
                        kh * kw,
                        (layer.stride[0], layer.stride[1]),
                        (0, 0),
                        (kh, kw),
                    )
                )
            elif isinstance(layer, QFlatten):
                pass  # every vector here is flat already
            elif isinstance(layer, QRequant):
                assert layer.in_frac is not None
                s = layer.in_frac - layer.format.frac
                d_lo, d_hi = _rounding_slack(layer.rounding, s)
                self.units.append(
                    _Unit(
                        i,
                        layer,
                        int(math.prod(out_shape)),
                        2.0**-s,
                        float(layer.format.qmin),
                        float(layer.format.qmax),
                        d_lo,
                        d_hi,
                    )
                )
                self.segments.append([])
            else:
                raise InputError(f"linear bounds do not support layer {type(layer).__name__}")
        self.out_size = int(math.prod(shapes[-1]))

    # ------------------------------------------------------------------ intermediate bounds
    @torch.no_grad()
    def ibp(self, lo: torch.Tensor, hi: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Exact interval bounds (int64, B×n) of every requantization unit's accumulator."""
        b = lo.shape[0]
        lo = lo.reshape(b, *self.net.input_shape)
        hi = hi.reshape(b, *self.net.input_shape)
        out = []
        bounds = self.net.int_bounds(lo, hi)
        for unit in self.units:
            l, u = bounds[unit.index - 1] if unit.index else (lo, hi)
            out.append((l.reshape(b, -1), u.reshape(b, -1)))
        return out

    def relax(
        self,
        k: int,
        l: torch.Tensor,
        u: torch.Tensor,
        slope_up: torch.Tensor | None = None,
        slope_lo: torch.Tensor | None = None,
        dtype: torch.dtype = F64,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sound lines ``aL z + bL <= y <= aU z + bU`` of unit layer ``k`` over the integer
        accumulator ranges ``[l, u]`` (int64 B×n). Slopes (float64, broadcastable to B×…×n)
        default to the chord of the exact staircase. Returns ``aU, bU, aL, bL``. With ``dtype``
        float32 (and float32 slopes) the same lines are computed in float32: approximations for
        the optimizer, not sound bounds."""
        unit = self.units[k]
        yl = unit.layer.integer(l).to(dtype)
        yu = unit.layer.integer(u).to(dtype)
        lf, uf = l.to(dtype), u.to(dtype)
        width = uf - lf
        chord = torch.where(width > 0, (yu - yl) / width.clamp(min=1.0), torch.zeros_like(yl))
        if slope_up is None:
            slope_up = chord
        if slope_lo is None:
            slope_lo = chord
        # batch dims of the slopes may carry extra axes (spec rows) between B and n
        extra = slope_up.dim() - l.dim()
        view = (l.shape[0],) + (1,) * extra + (l.shape[1],)
        yl, yu, lf, uf = (t.reshape(view) for t in (yl, yu, lf, uf))
        const = yl == yu
        inner = (uf - lf) >= 2
        lo_in, hi_in = lf + 1.0, uf - 1.0
        s, qmin, qmax = unit.scale, unit.qmin, unit.qmax
        zmag = torch.maximum(lf.abs(), uf.abs()) + 1.0
        qmag = max(abs(qmin), abs(qmax)) + 1.0
        neg_inf = torch.tensor(-math.inf, dtype=dtype)

        def upper_env(z: torch.Tensor) -> torch.Tensor:
            return (z * s + unit.d_hi).clamp(qmin, qmax)

        def lower_env(z: torch.Tensor) -> torch.Tensor:
            return (z * s - unit.d_lo).clamp(qmin, qmax)

        def candidates(kinks: tuple[float, float]) -> list[torch.Tensor]:
            """Where a piecewise-linear envelope minus a line can peak inside ``[l+1, u-1]``."""
            inside = [
                torch.minimum(torch.maximum(torch.full_like(lo_in, k), lo_in), hi_in) for k in kinks
            ]
            return [lo_in, hi_in, *inside]

        a, a2 = slope_up, slope_lo
        points = self._step_points(k, l, u)
        if points is not None:
            # exact: f(z) - a z over the integers of [l, u] peaks at these points
            # the extreme point is picked without gradient; the intercept ``f(z*) - a z*`` is
            # then differentiable in ``a`` (Danskin) without carrying every candidate
            zs, ys = (torch.stack(t).reshape(len(t), *view).to(dtype) for t in points)
            b_up = _extreme(zs, ys, a, top=True)
            b_lo = _extreme(zs, ys, a2, top=False)
        else:
            cands = [yl - a * lf, yu - a * uf]
            for z in candidates(((qmin - unit.d_hi) / s, (qmax - unit.d_hi) / s)):
                cands.append(torch.where(inner, upper_env(z) - a * z, neg_inf))
            b_up = torch.stack(torch.broadcast_tensors(*cands)).amax(0)
            cands = [yl - a2 * lf, yu - a2 * uf]
            for z in candidates(((qmin + unit.d_lo) / s, (qmax + unit.d_lo) / s)):
                cands.append(torch.where(inner, lower_env(z) - a2 * z, -neg_inf))
            b_lo = torch.stack(torch.broadcast_tensors(*cands)).amin(0)
        b_up = b_up + 8 * U * (a.abs() * zmag + qmag)
        b_lo = b_lo - 8 * U * (a2.abs() * zmag + qmag)
        zero = torch.zeros_like(b_up)
        a_up = torch.where(const, zero, a.expand_as(b_up))
        a_lo = torch.where(const, zero, a2.expand_as(b_lo))
        b_up = torch.where(const, yl.expand_as(b_up), b_up)
        b_lo = torch.where(const, yl.expand_as(b_lo), b_lo)
        return a_up, b_up, a_lo, b_lo

    def _step_points(
        self, k: int, l: torch.Tensor, u: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Integer points ``z`` of ``[l, u]`` (int64 B×n each) and their exact values ``f(z)``
        among which ``f(z) - a z`` takes its maximum and its minimum over all integers of ``[l,
        u]``, for every slope ``a``; None when the unit is not a right shift (then the envelope
        bounds of :meth:`relax` apply).

        Why these suffice: ``f`` is a monotone staircase, constant on runs. On a run ``f(z) - a
        z`` is extreme at the run's ends: ``l``, ``u``, and for each value ``v`` in ``(f(l),
        f(u)]`` the first point ``T(v)`` of its run and the last point ``T(v) - 1`` of the run
        before it. For a right shift by ``s``, ``T(v) = v 2^s - c(v)`` with ``c`` constant (half
        up: ``2^(s-1)``; floor: 0) or constant up to the parity of ``v`` (half even: ``2^(s-1)
        - [v odd]``), also under saturation since ``f(z) >= v`` iff the rounded value is ``>= v``
        for ``qmin < v <= qmax``. So ``v - a T(v)`` (and ``v - 1 - a (T(v) - 1)``) is affine in
        ``v`` within each parity class and peaks at the class's extreme values: ``f(l) + 1``,
        ``f(l) + 2``, ``f(u) - 1``, ``f(u)``; with a constant ``c`` (half up, floor) there is one
        class, and ``f(l) + 1``, ``f(u)`` suffice (6 points, not 10). Points outside ``[l, u]``
        are clipped into it, which keeps them valid points."""
        unit = self.units[k]
        layer = unit.layer
        assert layer.in_frac is not None
        shift = layer.in_frac - layer.format.frac
        if shift <= 0 or shift > 40 or max(abs(unit.qmin), abs(unit.qmax)) > 2.0**20:
            return None
        fl, fu = layer.integer(l), layer.integer(u)
        half = 1 << (shift - 1)
        zs = [l, u]
        ends = (
            (fl + 1, fu)
            if layer.rounding is not Rounding.HALF_EVEN
            else (fl + 1, fl + 2, fu - 1, fu)
        )
        for v in ends:
            t = v * (1 << shift)
            if layer.rounding is Rounding.HALF_UP:
                t = t - half
            elif layer.rounding is Rounding.HALF_EVEN:
                t = t - half + torch.remainder(v, 2)
            t = torch.minimum(torch.maximum(t, l), u)
            zs += [t, torch.maximum(t - 1, l)]
        return zs, [layer.integer(z) for z in zs]

    # ------------------------------------------------------------------ backward pass
    def backward(
        self,
        target: int,
        C: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        bounds: list[tuple[torch.Tensor, torch.Tensor]],
        slopes: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        betas: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        want_lambdas: bool = False,
        dtype: torch.dtype = F64,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Sound upper bounds of ``C · v`` where ``v`` is the *accumulator* of unit layer
        ``target`` (or the network output when ``target == len(units)``).

        ``C``: float64 B×R×n; ``lo, hi``: int64 B×input (flat); ``bounds``: per unit layer
        before ``target``, int64 (l, u) of shape B×n; ``slopes``: per unit layer (aU, aL) of shape
        B×R×n (None: chords); ``betas``: per unit layer (β for ``z <= u``, β for ``z >= l``), each
        B×R×n and >= 0. Returns the float bound (B×R), its error bound (B×R, >= 0) and, if asked,
        the coefficient λ on every unit layer's output (B×R×n) and, last, on the input (B×R×n_in),
        for branching scores and the bound's maximizing corner.

        ``dtype`` float32 runs the same pass in float32 (weights, slopes, multipliers, λ) and
        skips the error term (returned as zeros): a *non-rigorous* estimate, for the optimizer's
        gradient steps only, never for a decision (see :meth:`LinearBab.bound
        <qcert.verify.optimize.LinearBab.bound>`)."""
        if dtype not in (F64, F32):
            raise ValueError(f"backward runs in float64 or float32, not {dtype}")
        rigorous = dtype == F64
        b, r = C.shape[0], C.shape[1]
        lam = C.reshape(b * r, -1).to(dtype)
        const = torch.zeros(b * r, dtype=dtype)
        err = torch.zeros(b * r, dtype=F64)
        abs_const = torch.zeros(b * r, dtype=F64)
        terms = 0
        lambdas: list[torch.Tensor] = []
        seg = target if target < len(self.units) else len(self.units)
        k = seg  # the segment that ends at the target's accumulator is `seg`
        while True:
            for op in reversed(self.segments[k]):
                bias = op.bias if rigorous else op.bias32
                if bias is not None:
                    const = const + lam @ bias
                if rigorous:
                    lam_abs = lam.abs()
                    if op.bias is not None:
                        abs_const = abs_const + lam_abs @ op.bias.abs()
                        terms += op.bias.numel()
                    err = err + gamma(lam.shape[1]) * (lam_abs @ op.mag)
                lam = op.back(lam)
            if k == 0:
                break
            k -= 1
            unit = self.units[k]
            l, u = bounds[k]
            su = sl = None
            if slopes is not None:
                su, sl = slopes[k]
            a_up, b_up, a_lo, b_lo = self.relax(k, l, u, su, sl, dtype)
            if a_up.dim() == 2:
                a_up, b_up, a_lo, b_lo = (t.unsqueeze(1) for t in (a_up, b_up, a_lo, b_lo))
            lam3 = lam.reshape(b, r, -1)
            if want_lambdas:
                lambdas.insert(0, lam3)
            pos = lam3 >= 0
            a = torch.where(pos, a_up.expand_as(lam3), a_lo.expand_as(lam3))
            icpt = torch.where(pos, b_up.expand_as(lam3), b_lo.expand_as(lam3))
            const = const + (lam3 * icpt).sum(-1).reshape(-1)
            mu = lam3 * a
            if rigorous:
                abs_const = abs_const + (lam3.abs() * icpt.abs()).sum(-1).reshape(-1)
                terms += unit.size
                mu_err = mu.abs()
            if betas is not None:
                bu, bl = (t.clamp(min=0) for t in betas[k])
                lf, uf = l.to(dtype).unsqueeze(1), u.to(dtype).unsqueeze(1)
                mu = mu - bu + bl
                const = const + (bu * uf - bl * lf).sum(-1).reshape(-1)
                if rigorous:
                    abs_const = abs_const + (bu * uf.abs() + bl * lf.abs()).sum(-1).reshape(-1)
                    terms += unit.size
                    mu_err = mu_err + bu.abs() + bl.abs()
            if rigorous:
                zmag = torch.maximum(l.abs(), u.abs()).to(F64).unsqueeze(1)
                err = err + (4 * U * (mu_err * zmag)).sum(-1).reshape(-1)
            lam = mu.reshape(b * r, -1)
        # the input box: max of lam · x is lam⁺ · hi + lam⁻ · lo
        lof, hif = lo.to(dtype), hi.to(dtype)
        lam3 = lam.reshape(b, r, -1)
        if want_lambdas:
            lambdas.append(lam3)
        top = (lam3.clamp(min=0) * hif.unsqueeze(1) + lam3.clamp(max=0) * lof.unsqueeze(1)).sum(-1)
        total = top + const.reshape(b, r)
        if not rigorous:
            return total, torch.zeros_like(total), lambdas
        xmag = torch.maximum(lof.abs(), hif.abs()).unsqueeze(1)
        n_in = lam3.shape[-1]
        err3 = err.reshape(b, r) + gamma(n_in) * (lam3.abs() * xmag).sum(-1)
        abs_total = abs_const.reshape(b, r) + (lam3.abs() * xmag).sum(-1)
        err3 = err3 + gamma(terms + n_in + 8) * abs_total + 4 * U * total.abs()
        return total, 2.0 * err3 + 1e-9, lambdas

    # ------------------------------------------------------------------ conveniences
    @torch.no_grad()
    def refine(
        self,
        lo: torch.Tensor,
        hi: torch.Tensor,
        bounds: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        max_units: int = 512,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Intermediate bounds: interval bounds tightened, layer by layer, by backward linear
        bounds of each unit's accumulator (layers with more than ``max_units`` units keep their
        interval bounds). Every bound stays a sound integer bound."""
        if bounds is None:
            bounds = self.ibp(lo, hi)
        bounds = list(bounds)
        for k in range(1, len(self.units)):
            n = self.units[k].size
            if n > max_units:
                continue
            units = torch.arange(n)
            val, err, _ = self.backward(k, range_rows(n, units, lo.shape[0]), lo, hi, bounds[:k])
            bounds[k] = narrow(*bounds[k], units, _to_int(torch.floor(val + err), val))
        return bounds


def range_rows(n: int, units: torch.Tensor, batch: int) -> torch.Tensor:
    """The rows ``+z_i`` then ``-z_i`` for ``i`` in ``units`` of a layer of ``n`` accumulators
    (float64 batch×2m×n): their upper bounds are the units' upper and negated lower bounds."""
    eye = torch.eye(n, dtype=F64)[units].unsqueeze(0).expand(batch, -1, -1)
    return torch.cat([eye, -eye], dim=1)


def narrow(
    l: torch.Tensor, u: torch.Tensor, units: torch.Tensor, ub: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranges ``[l, u]`` (int64 B×n) intersected, on ``units``, with the integer upper
    bounds ``ub`` (B×2m) of :func:`range_rows`; an empty intersection (no point of the
    subproblem reaches the unit) keeps ``l <= u`` by lowering ``l``."""
    m = int(units.numel())
    nl, nu = l.clone(), u.clone()
    nu[:, units] = torch.minimum(u[:, units], ub[:, :m])
    nl[:, units] = torch.maximum(l[:, units], -ub[:, m:])
    return torch.minimum(nl, nu), nu


def _extreme(zs: torch.Tensor, ys: torch.Tensor, a: torch.Tensor, top: bool) -> torch.Tensor:
    """``max_p`` (``top``) or ``min_p`` of ``ys[p] - a zs[p]`` over the points' axis 0.

    The points come from :meth:`LinearBounds._step_points`: even positions are the left ends of
    runs (``l`` and the ``T(v)``), odd ones the right ends (``u`` and the ``T(v) - 1``). With
    ``a >= 0`` everywhere a maximum lies at a left end and a minimum at a right end (and the
    reverse for ``a <= 0``), so half the points suffice; otherwise all are tried."""
    with torch.no_grad():
        if bool((a >= 0).all()):
            half = 0 if top else 1
        elif bool((a <= 0).all()):
            half = 1 if top else 0
        else:
            half = None
    if half is not None:
        zs, ys = zs[half::2], ys[half::2]
    # one point at a time: a reduction over the short leading axis (or an argmax and gathers)
    # costs several times more than these elementwise passes
    if not a.requires_grad:
        best = ys[0] - a * zs[0]
        for p in range(1, zs.shape[0]):
            v = ys[p] - a * zs[p]
            best = torch.maximum(best, v) if top else torch.minimum(best, v)
        return best
    with torch.no_grad():
        ad = a.detach()
        z, y = zs[0].expand_as(ad), ys[0].expand_as(ad)
        best = y - ad * z
        for p in range(1, zs.shape[0]):
            v = ys[p] - ad * zs[p]
            better = v > best if top else v < best
            best = torch.where(better, v, best)
            z = torch.where(better, zs[p], z)
            y = torch.where(better, ys[p], y)
    return y - a * z


def _to_int(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Float bounds to int64, saturated to int64's range (an infinite bound stays harmless)."""
    lim = float(2**62)
    return v.clamp(-lim, lim).to(torch.int64)


def _rounding_slack(rounding: Rounding, shift: int) -> tuple[float, float]:
    """``(d_lo, d_hi)`` with ``v - d_lo <= R(v) <= v + d_hi`` for every ``v = z 2^-shift``."""
    if shift <= 0:
        return 0.0, 0.0
    ulp = 2.0**-shift
    if rounding is Rounding.HALF_UP:
        return 0.5 - ulp, 0.5
    if rounding is Rounding.HALF_EVEN:
        return 0.5, 0.5
    return 1.0 - ulp, 0.0
