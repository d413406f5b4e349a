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

``unit_bounds`` (optional, sound by contract): tighter bounds of each requantization's input (e.g.
linear bounds), intersected with the interval bounds and propagated: smaller big-M constants, more
stable units. One deadline per query: the encoding checks it, each solve gets what is left of it.
HiGHS runs in a child process (``highs_process``) that is killed if it overruns the deadline.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
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
from qcert.verify.highs_process import ARRAYS, HIGHS
from qcert.verify.spec import OutputSpec

INF = float("inf")
HALF = 0.5  # integer rows are relaxed by this much on each side
#: per requantization layer, (lo, hi) int64 bounds of its input (one entry per unit)
UnitBounds = Sequence[tuple[torch.Tensor, torch.Tensor]]


class _OutOfTime(Exception):
    pass


def _check_time(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise _OutOfTime


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

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The rows as (column indices, values, row starts, lower sides, upper sides)."""
        idx, val = [r[0] for r in self.rows], [r[1] for r in self.rows]
        return (
            np.concatenate([np.zeros(0, np.int32), *idx]).astype(np.int32),
            np.concatenate([np.zeros(0), *val]),
            np.cumsum([0] + [i.size for i in idx]),
            np.array([r[2] for r in self.rows], dtype=np.float64),
            np.array([r[3] for r in self.rows], dtype=np.float64),
        )


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
    o, c, y, x, a, b = np.meshgrid(*(np.arange(n) for n in (co, ci, oh, ow, kh, kw)), indexing="ij")
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
    c, y, x, a, b = np.meshgrid(*(np.arange(n) for n in (ch, oh, ow, kh, kw)), indexing="ij")
    rows = ((c * oh + y) * ow + x).ravel()
    cols = ((c * h + y * sh + a) * w + x * sw + b).ravel()
    return sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(ch * oh * ow, ch * h * w))


def _check_unit_bounds(net: QNetwork, unit_bounds: UnitBounds | None) -> list[int]:
    req = [i for i, layer in enumerate(net.layers) if isinstance(layer, QRequant)]
    if unit_bounds is not None and len(unit_bounds) != len(req):
        raise InputError(
            f"unit_bounds has {len(unit_bounds)} entries for {len(req)} requantization layers"
        )
    return req


def encode(
    net: QNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    unit_bounds: UnitBounds | None = None,
    deadline: float | None = None,
) -> tuple[_Model, _Expr, int]:
    """The exact MILP of the network on the integer box: (model, logit expressions, #inputs).
    ``unit_bounds`` as in :func:`milp_search`; past ``deadline`` (monotonic) it raises _OutOfTime."""
    req = _check_unit_bounds(net, unit_bounds)
    model = _Model([], [], [], [])
    flo, fhi = lo.reshape(-1), hi.reshape(-1)
    n_in = flo.numel()
    for a, b in zip(flo.tolist(), fhi.tolist()):
        model.var(float(a), float(b))
    expr = _Expr(sp.identity(n_in, format="csr", dtype=np.float64), np.zeros(n_in, np.int64))
    # interval bounds of every layer's input, tightened by unit_bounds where given
    b_lo = net.check_input(lo.reshape(1, *net.input_shape))
    b_hi = net.check_input(hi.reshape(1, *net.input_shape))
    for i, layer in enumerate(net.layers):
        _check_time(deadline)
        ncols = len(model.lower)
        E = expr.E
        if E.shape[1] < ncols:
            E = sp.csr_matrix((E.data, E.indices, E.indptr), shape=(E.shape[0], ncols))
        if isinstance(layer, QRequant) and unit_bounds is not None:
            u_lo, u_hi = unit_bounds[req.index(i)]
            u_lo = torch.as_tensor(u_lo, dtype=torch.int64).reshape(b_lo.shape)
            u_hi = torch.as_tensor(u_hi, dtype=torch.int64).reshape(b_hi.shape)
            b_lo, b_hi = torch.maximum(b_lo, u_lo), torch.minimum(b_hi, u_hi)
            if bool((b_lo > b_hi).any()):
                raise InputError(f"unit_bounds of layer {i} contradict its interval bounds")
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
            acc = _Expr(E, expr.c)
            expr = _requant(model, layer, acc, b_lo.reshape(-1), b_hi.reshape(-1), deadline)
        else:
            raise InputError(f"the MILP encoding does not support layer {type(layer).__name__}")
        b_lo, b_hi = layer.int_bounds(b_lo, b_hi)
    ncols = len(model.lower)
    E = expr.E
    expr = _Expr(sp.csr_matrix((E.data, E.indices, E.indptr), shape=(E.shape[0], ncols)), expr.c)
    return model, expr, n_in


def _requant(
    model: _Model,
    layer: QRequant,
    acc: _Expr,
    acc_lo: torch.Tensor,
    acc_hi: torch.Tensor,
    deadline: float | None = None,
) -> _Expr:
    assert layer.in_frac is not None
    s = layer.in_frac - layer.format.frac
    qmin, qmax = layer.format.qmin, layer.format.qmax
    rlo = round_shift(acc_lo, s, layer.rounding).tolist()
    rhi = round_shift(acc_hi, s, layer.rounding).tolist()
    rule = layer.rounding.value
    out_rows: list[tuple[list[int], list[float], int]] = []  # (cols, vals, const) per output
    for i in range(len(rlo)):
        if i % 512 == 0:
            _check_time(deadline)
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
    indptr = np.cumsum([0] + [len(r[0]) for r in out_rows])
    indices = np.array([c for r in out_rows for c in r[0]], dtype=np.int64)
    data = np.array([v for r in out_rows for v in r[1]], dtype=np.float64)
    const = np.array([r[2] for r in out_rows], dtype=np.int64)
    E = sp.csr_matrix((data, indices, indptr), shape=(len(out_rows), len(model.lower)))
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
    unit_bounds: UnitBounds | None = None,
) -> SearchOutcome:
    """Decide the query with one HiGHS MILP per unsafe disjunct (see the module docstring).

    ``use_bounds`` skips disjuncts that exact interval bounds already rule out on the whole box.
    ``unit_bounds``: per requantization layer (in network order), (lo, hi) int64 bounds of its
    input (the accumulator, one value per unit, any shape with that many elements), sound for
    every integer input of the box: the caller's contract, intersected with the interval bounds
    (an empty intersection is an InputError). The whole query, building included, keeps to
    ``timeout``: the clock is checked while building and each solve gets the time left.
    """
    if importlib.util.find_spec("highspy") is None:  # pragma: no cover
        raise InputError("the MILP method needs the highspy package (pip install highspy)")
    t0 = time.monotonic()
    deadline = t0 + float(timeout)
    lo, hi = lo.reshape(1, *net.input_shape), hi.reshape(1, *net.input_shape)
    lo, hi = check_box(net, lo, hi)
    _check_unit_bounds(net, unit_bounds)
    out = SearchOutcome(SAFE, stats={"solves": 0, "build_s": 0.0, "solve_s": 0.0})
    order = list(range(spec.num_disjuncts))
    if use_bounds:
        sb = bounds if bounds is not None else SpecBounds(net, spec)
        slack = spec.disjunct_slack(sb.upper(lo, hi))[0]
        order = [d for d in sorted(order, key=lambda d: -int(slack[d])) if int(slack[d]) > 0]
    if not order:
        return out
    HIGHS.start()
    try:
        model, z, n_in = encode(net, lo, hi, unit_bounds, deadline)
    except _OutOfTime:
        out.status, out.note = TIMEOUT, "time limit (building the MILP)"
        return out
    base = model.csr()  # the rows every disjunct shares; a disjunct adds its spec rows
    A = spec.A.numpy()  # the spec rows over the columns: A_r z = (A_r E) v + A_r c
    AE = sp.csr_matrix(sp.csr_matrix(A.astype(np.float64)) @ z.E)
    Ac = A @ z.c
    group = spec.group.tolist()
    out.stats["build_s"] = time.monotonic() - t0
    for d in order:
        if time.monotonic() >= deadline:
            out.status, out.note = TIMEOUT, "time limit"
            return out
        rows = [r for r in range(len(group)) if group[r] == d]
        sub = AE[rows]
        lo_d = np.array([float(int(spec.b[r]) - int(Ac[r])) - HALF for r in rows])
        ts = time.monotonic()
        status, x = _solve(model, base, sub, lo_d, deadline)
        out.stats["solve_s"] += time.monotonic() - ts
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
    base: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    sub: sp.csr_matrix,
    sub_lo: np.ndarray,
    deadline: float,
) -> tuple[str, np.ndarray | None]:
    """One MILP: the shared rows ``base`` (index, value, starts, lower, upper) and the rows
    ``sub x >= sub_lo``, solved in the HiGHS process by ``deadline`` (monotonic)."""
    b_idx, b_val, b_starts, b_lo, b_hi = base
    arrays = dict(
        col_lower=np.array(model.lower, dtype=np.float64),
        col_upper=np.array(model.upper, dtype=np.float64),
        row_lower=np.concatenate([b_lo, sub_lo]),
        row_upper=np.concatenate([b_hi, np.full(sub.shape[0], INF)]),
        start=np.concatenate([b_starts, b_starts[-1] + sub.indptr[1:]]).astype(np.int64),
        index=np.concatenate([b_idx, sub.indices.astype(np.int32)]),
        value=np.concatenate([b_val, sub.data]),
    )
    return HIGHS.solve([arrays[k] for k in ARRAYS], deadline)
