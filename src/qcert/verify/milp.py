"""The MILP peer: an exact mixed-integer encoding of a query, solved with HiGHS (``highspy``).

Variables: the integer inputs ``x`` in the box; for each requantized unit the rounded value ``r``
(integer) and the output ``q`` (integer) with binaries for the two sides of the clamp. Affine
layers, flatten and average pooling are exact integer linear expressions (no variables). For a
requantization ``q = clamp(round(acc / 2**s), qmin, qmax)`` with ``s > 0``:

* half up:   ``-2**(s-1) <= acc - 2**s r <= 2**(s-1) - 1``
* floor:     ``0 <= acc - 2**s r <= 2**s - 1``
* half even: ``r = 2k + e`` (``k`` integer, ``e`` binary parity), and
  ``-2**(s-1) + e <= acc - 2**s r <= 2**(s-1) - e`` (a tie ``|t| = 2**(s-1)`` only for even ``r``)
* ``s <= 0``: ``r = acc · 2**(-s)`` exactly (an expression).

The clamp, with ``[L, U]`` the exact interval bounds of ``r`` (from ``net.int_bounds``; units that
are always inside, always below or always above the range need no binaries), binaries ``δ_lo``
(``q = qmin``, ``r <= qmin``) and ``δ_hi`` (``q = qmax``, ``r >= qmax``), ``δ_lo + δ_hi <= 1``::

    q >= r - (U - qmax) δ_hi        q <= r + (qmin - L) δ_lo
    q <= qmax - (qmax - qmin) δ_lo  q >= qmin + (qmax - qmin) δ_hi
    r <= U - (U - qmin) δ_lo        r >= L + (qmax - L) δ_hi

Every feasible integer assignment has ``q = clamp(r)``, and every input has one. The query asks,
per unsafe disjunct, whether its constraints ``A z >= b`` can hold (one MILP each). Every row has
integer coefficients over integer variables, so each side is relaxed by 1/2 without changing the
integer solutions; this keeps HiGHS's floating-point tolerances away from the decision. A feasible
point is re-checked with the reference executor; only ``Optimal`` (feasible, re-checked) and
``Infeasible`` are answers, any other solver status is a timeout. The MILP's "safe" relies on
HiGHS's floating-point arithmetic; the branch and bound is the exact verifier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from qcert.errors import InputError
from qcert.quant.format import round_shift
from qcert.quant.inputs import check_box
from qcert.quant.layers import QAvgPool2d, QConv2d, QFlatten, QLinear, QRequant
from qcert.quant.network import QNetwork
from qcert.verify.bab import SAFE, TIMEOUT, UNSAFE, SearchOutcome
from qcert.verify.bounds import SpecBounds
from qcert.verify.spec import OutputSpec

try:  # highspy is a dependency; import lazily-failing so the rest of qcert works without it
    import highspy
except ImportError:  # pragma: no cover
    highspy = None  # type: ignore[assignment]

INF = float("inf")
HALF = 0.5  # integer rows are relaxed by this much on each side


@dataclass
class _Model:
    """Rows (CSR pieces) and columns of the encoding, built incrementally."""

    lower: list[float]
    upper: list[float]
    integer: list[bool]
    rows: list[tuple[np.ndarray, np.ndarray, float, float]]

    def var(self, lo: float, hi: float) -> int:
        self.lower.append(lo)
        self.upper.append(hi)
        self.integer.append(True)
        return len(self.lower) - 1

    def row(self, idx: np.ndarray, val: np.ndarray, lo: float, hi: float) -> None:
        """An integer-valued row ``lo <= Σ val·v <= hi`` (each finite side relaxed by 1/2)."""
        keep = val != 0
        self.rows.append((idx[keep], val[keep], lo - HALF, hi + HALF))


class _Expr:
    """Affine integer expressions ``E v + c`` of a layer's outputs (E sparse CSR over columns)."""

    def __init__(self, E: sp.csr_matrix, c: np.ndarray) -> None:
        self.E, self.c = E, c

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        a, b = self.E.indptr[i], self.E.indptr[i + 1]
        return self.E.indices[a:b], self.E.data[a:b], int(self.c[i])


def _conv_matrix(layer: QConv2d) -> sp.csr_matrix:
    """The convolution as a sparse (out × in) matrix on flattened C×H×W tensors."""
    assert layer.in_shape is not None and layer.out_shape is not None
    ci, h, w = layer.in_shape
    co, oh, ow = layer.out_shape
    kh, kw = layer.kernel_size
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    wt = layer.int_weight().numpy()
    o, c, y, x, a, b = np.meshgrid(
        np.arange(co),
        np.arange(ci),
        np.arange(oh),
        np.arange(ow),
        np.arange(kh),
        np.arange(kw),
        indexing="ij",
    )
    iy, ix = y * sh - ph + a, x * sw - pw + b
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    rows = ((o * oh + y) * ow + x)[ok]
    cols = ((c * h + iy) * w + ix)[ok]
    vals = wt[o[ok], c[ok], a[ok], b[ok]].astype(np.float64)
    return sp.csr_matrix((vals, (rows, cols)), shape=(co * oh * ow, ci * h * w))


def _pool_matrix(layer: QAvgPool2d) -> sp.csr_matrix:
    assert layer.in_shape is not None and layer.out_shape is not None
    ch, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    c, y, x, a, b = np.meshgrid(
        np.arange(ch), np.arange(oh), np.arange(ow), np.arange(kh), np.arange(kw), indexing="ij"
    )
    rows = ((c * oh + y) * ow + x).ravel()
    cols = ((c * h + y * sh + a) * w + x * sw + b).ravel()
    return sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(ch * oh * ow, ch * h * w))


def encode(net: QNetwork, lo: torch.Tensor, hi: torch.Tensor) -> tuple[_Model, _Expr, int]:
    """The exact MILP of the network on the integer box: (model, logit expressions, #inputs)."""
    model = _Model([], [], [], [])
    flo, fhi = lo.reshape(-1), hi.reshape(-1)
    n_in = flo.numel()
    for a, b in zip(flo.tolist(), fhi.tolist()):
        model.var(float(a), float(b))
    expr = _Expr(sp.identity(n_in, format="csr", dtype=np.float64), np.zeros(n_in, np.int64))
    bounds = net.int_bounds(lo.reshape(1, *net.input_shape), hi.reshape(1, *net.input_shape))
    for i, layer in enumerate(net.layers):
        ncols = len(model.lower)
        E = expr.E
        if E.shape[1] < ncols:
            E = sp.csr_matrix((E.data, E.indices, E.indptr), shape=(E.shape[0], ncols))
        if isinstance(layer, QLinear | QConv2d):
            W = (
                sp.csr_matrix(layer.int_weight().numpy().astype(np.float64))
                if isinstance(layer, QLinear)
                else _conv_matrix(layer)
            )
            bias = layer.int_bias_acc()
            wi = W.astype(np.int64)
            c = wi @ expr.c
            if bias is not None:
                b = bias.numpy()
                if isinstance(layer, QConv2d):
                    assert layer.out_shape is not None
                    b = np.repeat(b, layer.out_shape[1] * layer.out_shape[2])
                c = c + b
            expr = _Expr(sp.csr_matrix(W @ E), np.asarray(c, dtype=np.int64))
        elif isinstance(layer, QAvgPool2d):
            P = _pool_matrix(layer)
            expr = _Expr(sp.csr_matrix(P @ E), P.astype(np.int64) @ expr.c)
        elif isinstance(layer, QFlatten):
            expr = _Expr(E, expr.c)
        elif isinstance(layer, QRequant):
            acc_lo, acc_hi = bounds[i - 1] if i else (lo, hi)
            expr = _requant(model, layer, _Expr(E, expr.c), acc_lo.reshape(-1), acc_hi.reshape(-1))
        else:
            raise InputError(f"the MILP encoding does not support layer {type(layer).__name__}")
    ncols = len(model.lower)
    E = expr.E
    expr = _Expr(sp.csr_matrix((E.data, E.indices, E.indptr), shape=(E.shape[0], ncols)), expr.c)
    return model, expr, n_in


def _requant(
    model: _Model, layer: QRequant, acc: _Expr, acc_lo: torch.Tensor, acc_hi: torch.Tensor
) -> _Expr:
    assert layer.in_frac is not None
    s = layer.in_frac - layer.format.frac
    qmin, qmax = layer.format.qmin, layer.format.qmax
    rlo = round_shift(acc_lo, s, layer.rounding).tolist()
    rhi = round_shift(acc_hi, s, layer.rounding).tolist()
    rule = layer.rounding.value
    out_rows: list[tuple[list[int], list[float], int]] = []  # (cols, vals, const) per output
    for i in range(len(rlo)):
        L, U = rlo[i], rhi[i]
        if U <= qmin or L >= qmax or L == U:
            out_rows.append(([], [], min(max(L, qmin), qmax)))
            continue
        idx, val, c = acc.row(i)
        # r as an expression (cols, vals, const)
        if s <= 0:
            m = 1 << (-s)
            r_idx, r_val, r_c = list(idx), [v * m for v in val], c * m
        else:
            p = 1 << s
            half = 1 << (s - 1)
            r = model.var(float(L), float(U))
            cols = np.append(idx, r)
            vals = np.append(val, -float(p))  # acc - 2**s r
            if rule == "half_up":
                model.row(cols, vals, -half - c, half - 1 - c)
            elif rule == "floor":
                model.row(cols, vals, -c, p - 1 - c)
            else:  # half_even: r = 2k + e, tie only for even r
                k = model.var(float((L >> 1) - 1), float((U >> 1) + 1))
                e = model.var(0.0, 1.0)
                model.row(np.array([r, k, e]), np.array([1.0, -2.0, -1.0]), 0, 0)
                # t = acc - 2**s r:  t - e >= -2**(s-1)  and  t + e <= 2**(s-1)
                model.row(np.append(cols, e), np.append(vals, -1.0), -half - c, INF)
                model.row(np.append(cols, e), np.append(vals, 1.0), -INF, half - c)
            r_idx, r_val, r_c = [r], [1.0], 0
        if L >= qmin and U <= qmax:
            out_rows.append((r_idx, r_val, r_c))
            continue
        q = model.var(float(max(L, qmin)), float(min(U, qmax)))
        r_i, r_v = np.array(r_idx, dtype=np.int64), np.array(r_val, dtype=np.float64)
        low, high = L < qmin, U > qmax
        dlo = model.var(0.0, 1.0) if low else -1
        dhi = model.var(0.0, 1.0) if high else -1
        span = float(qmax - qmin)
        # q - r >= -(U - qmax) δ_hi   and   q - r <= (qmin - L) δ_lo
        base_i, base_v = np.append(r_i, q), np.append(-r_v, 1.0)
        if high:
            model.row(np.append(base_i, dhi), np.append(base_v, float(U - qmax)), r_c, INF)
            model.row(np.array([q, dhi]), np.array([1.0, -span]), qmin, INF)
            model.row(np.append(r_i, dhi), np.append(r_v, -float(qmax - L)), L - r_c, INF)
        else:
            model.row(base_i, base_v, r_c, INF)
        if low:
            model.row(np.append(base_i, dlo), np.append(base_v, -float(qmin - L)), -INF, r_c)
            model.row(np.array([q, dlo]), np.array([1.0, span]), -INF, qmax)
            model.row(np.append(r_i, dlo), np.append(r_v, float(U - qmin)), -INF, U - r_c)
        else:
            model.row(base_i, base_v, -INF, r_c)
        if low and high:
            model.row(np.array([dlo, dhi]), np.array([1.0, 1.0]), -INF, 1)
        out_rows.append(([q], [1.0], 0))
    n = len(out_rows)
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices: list[int] = []
    data: list[float] = []
    const = np.zeros(n, dtype=np.int64)
    for i, (ci, cv, cc) in enumerate(out_rows):
        indices += list(ci)
        data += list(cv)
        indptr[i + 1] = len(indices)
        const[i] = cc
    E = sp.csr_matrix(
        (np.array(data, dtype=np.float64), np.array(indices, dtype=np.int64), indptr),
        shape=(n, len(model.lower)),
    )
    return _Expr(E, const)


def milp_search(
    net: QNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    spec: OutputSpec,
    *,
    timeout: float = 20.0,
    use_bounds: bool = True,
    bounds: SpecBounds | None = None,
) -> SearchOutcome:
    """Decide the query with one HiGHS MILP per unsafe disjunct (see the module docstring).

    ``use_bounds`` skips disjuncts that exact interval bounds already rule out on the whole box.
    """
    if highspy is None:  # pragma: no cover
        raise InputError("the MILP method needs the highspy package (pip install highspy)")
    t0 = time.monotonic()
    lo, hi = lo.reshape(1, *net.input_shape), hi.reshape(1, *net.input_shape)
    lo, hi = check_box(net, lo, hi)
    out = SearchOutcome(SAFE, stats={"solves": 0})
    order = list(range(spec.num_disjuncts))
    if use_bounds:
        sb = bounds if bounds is not None else SpecBounds(net, spec)
        slack = spec.disjunct_slack(sb.upper(lo, hi))[0]
        order = [d for d in sorted(order, key=lambda d: -int(slack[d])) if int(slack[d]) > 0]
    if not order:
        return out
    model, z, n_in = encode(net, lo, hi)
    ncol = len(model.lower)
    # the spec rows over the columns: A_r z = (A_r E) v + A_r c
    A = spec.A.numpy()
    AE = sp.csr_matrix(sp.csr_matrix(A.astype(np.float64)) @ z.E)
    Ac = A @ z.c
    base_starts = [0]
    base_idx: list[np.ndarray] = []
    base_val: list[np.ndarray] = []
    for idx, val, _, _ in model.rows:
        base_idx.append(idx)
        base_val.append(val)
        base_starts.append(base_starts[-1] + idx.size)
    row_lo = [r[2] for r in model.rows]
    row_hi = [r[3] for r in model.rows]
    group = spec.group.tolist()
    for d in order:
        remaining = t0 + float(timeout) - time.monotonic()
        if remaining <= 0:
            out.status, out.note = TIMEOUT, "time limit"
            return out
        idx_l, val_l, lo_l, hi_l, starts = (
            list(base_idx),
            list(base_val),
            list(row_lo),
            list(row_hi),
            list(base_starts),
        )
        for r in (r for r in range(len(group)) if group[r] == d):
            a, b = AE.indptr[r], AE.indptr[r + 1]
            idx_l.append(AE.indices[a:b].astype(np.int64))
            val_l.append(AE.data[a:b])
            starts.append(starts[-1] + (b - a))
            lo_l.append(float(int(spec.b[r]) - int(Ac[r])) - HALF)
            hi_l.append(INF)
        status, x = _solve(model, ncol, idx_l, val_l, starts, lo_l, hi_l, remaining)
        out.stats["solves"] += 1
        if status == "feasible":
            assert x is not None
            point = torch.tensor(np.rint(x[:n_in]), dtype=torch.int64).view(lo.shape)
            point = torch.minimum(torch.maximum(point, lo), hi)
            if bool(spec.holds(net.integer_forward(point))[0]):
                out.status, out.counterexample = UNSAFE, point[0]
                out.note = f"MILP of disjunct {d}"
                return out
            out.status, out.note = TIMEOUT, "solver point failed the exact re-check (numerics)"
            return out
        if status != "infeasible":
            out.status, out.note = TIMEOUT, f"solver status {status}"
            return out
    return out


def _solve(
    model: _Model,
    ncol: int,
    idx: list[np.ndarray],
    val: list[np.ndarray],
    starts: list[int],
    row_lo: list[float],
    row_hi: list[float],
    time_limit: float,
) -> tuple[str, np.ndarray | None]:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", max(0.01, float(time_limit)))
    h.setOptionValue("mip_feasibility_tolerance", 1e-7)
    h.setOptionValue("primal_feasibility_tolerance", 1e-7)
    lp = highspy.HighsLp()
    lp.num_col_ = ncol
    lp.num_row_ = len(row_lo)
    lp.col_cost_ = np.zeros(ncol)
    lp.col_lower_ = np.array(model.lower, dtype=np.float64)
    lp.col_upper_ = np.array(model.upper, dtype=np.float64)
    lp.row_lower_ = np.array(row_lo, dtype=np.float64)
    lp.row_upper_ = np.array(row_hi, dtype=np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = ncol
    lp.a_matrix_.num_row_ = len(row_lo)
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = (
        np.concatenate(idx).astype(np.int32) if idx else np.zeros(0, dtype=np.int32)
    )
    lp.a_matrix_.value_ = np.concatenate(val) if val else np.zeros(0)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * ncol
    h.passModel(lp)
    h.run()
    st = h.getModelStatus()
    if st == highspy.HighsModelStatus.kOptimal:
        return "feasible", np.array(h.getSolution().col_value[:ncol])
    if st == highspy.HighsModelStatus.kInfeasible:
        return "infeasible", None
    return h.modelStatusToString(st), None
