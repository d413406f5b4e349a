"""Branching for the linear-bound search: which unit to split (a BaBSR-like score), where (an
integer threshold on the staircase), the children's re-tightened ranges, and the queue of open
subproblems. Children of a split partition their parent's integer points: ``z <= t`` and
``z >= t + 1``."""

from __future__ import annotations

import time

import torch

from qcert.verify.linear import F64, narrow, range_rows
from qcert.verify.optimize import Bounds, LinearBab, Params, floor_int


def largest_at_most(layer, l: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Per unit: the largest integer ``t`` in ``[l, u - 1]`` with ``y(t) <= v`` (``y(l) <= v <
    y(u)`` assumed; the staircase is monotone), by bisection in exact integer arithmetic."""
    a, b = l.clone(), u.clone()
    while True:
        open_ = (b - a) > 1
        if not bool(open_.any()):
            return a
        mid = torch.div(a + b, 2, rounding_mode="floor")
        ok = layer.integer(mid) <= v
        a = torch.where(open_ & ok, mid, a)
        b = torch.where(open_ & ~ok, mid, b)


def corners(lam_in: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The input corner maximizing each row's linear bound (B×R×n → (B·R)×n int64)."""
    b, r, n = lam_in.shape
    return torch.where(lam_in > 0, hi.reshape(1, 1, n), lo.reshape(1, 1, n)).reshape(b * r, n)


def _gap(search: LinearBab, k: int, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The vertical gap of unit layer ``k``'s chord relaxation over ``[l, u]`` (B×n)."""
    a_up, b_up, a_lo, b_lo = search.lb.relax(k, l, u)
    lf, uf = l.to(F64), u.to(F64)
    return torch.maximum((a_up - a_lo) * lf + b_up - b_lo, (a_up - a_lo) * uf + b_up - b_lo)


def threshold(layer, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Where a unit with range ``[l, u]`` (not fixed) is split: ``z <= t`` | ``z >= t + 1``, with
    ``t`` where the staircase leaves its bottom step (if its range starts there), else its top
    step (if it ends there), else at its middle step."""
    yl, yu = layer.integer(l), layer.integer(u)
    fmt = layer.format
    v = torch.div(yl + yu - 1, 2, rounding_mode="floor")  # the middle step
    v = torch.where(yl == fmt.qmin, yl, v)  # leave the bottom step first
    v = torch.where((yl > fmt.qmin) & (yu == fmt.qmax), yu - 1, v)  # else the top one
    return largest_at_most(layer, l, u, v)


def scores(
    search: LinearBab, bounds: Bounds, lams: list[torch.Tensor], gain: bool = True
) -> list[torch.Tensor]:
    """Per unit layer (B×n): ``Σ_rows |λ|`` times what a split removes of the unit's
    relaxation gap (``gain``: the parent's gap less the mean of the children's, plus 0.3 of the
    parent's gap) or the parent's gap itself (``babsr``); -1 where
    the unit is fixed and cannot be split.

    Why the gain: far from its clamps a staircase of many steps is a line plus a rounding band
    one step wide, whose relaxation gap a split in the middle leaves as it is (each child is
    again a line plus the band); splitting off a clamped step, or a unit of two or three values,
    removes most of its gap."""
    out = []
    for k, ((l, u), lam) in enumerate(zip(bounds, lams)):
        layer = search.lb.units[k].layer
        gap = _gap(search, k, l, u)
        fixed = layer.integer(l) == layer.integer(u)
        if gain:
            t = threshold(layer, l, torch.where(fixed, l + 1, u))
            t = torch.where(fixed, l, t)
            kids = _gap(search, k, l, t) + _gap(search, k, torch.minimum(t + 1, u), u)
            gap = (gap - 0.5 * kids).clamp(min=0.0) + 0.3 * gap
        s = lam.abs().sum(1) * gap
        out.append(torch.where(fixed, torch.full_like(s, -1.0), s))
    return out


def choose(score: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per subproblem: (layer, unit) of the highest score; unit -1 when nothing can be split."""
    if not score:
        return None
    best = torch.stack([s.max(1).values for s in score], 1)  # B×L
    layer = best.argmax(1)
    unit = torch.stack([s.argmax(1) for s in score], 1).gather(1, layer.unsqueeze(1)).squeeze(1)
    top = best.gather(1, layer.unsqueeze(1)).squeeze(1)
    return layer, torch.where(top < 0, torch.full_like(unit, -1), unit)


def branch(
    search: LinearBab, bounds: Bounds, params: Params, choice: tuple[torch.Tensor, torch.Tensor]
) -> tuple[Bounds, Params]:
    """Children (2B: the ``z <= t`` halves, then the ``z >= t + 1`` halves) of every subproblem."""
    layer, unit = choice
    b = layer.shape[0]
    lows = [l.repeat(2, 1) for l, _ in bounds]
    ups = [u.repeat(2, 1) for _, u in bounds]
    for k in range(len(bounds)):
        sel = (layer == k).nonzero().squeeze(1)
        if not sel.numel():
            continue
        uu = unit[sel]
        l, u = bounds[k][0][sel, uu], bounds[k][1][sel, uu]
        t = threshold(search.lb.units[k].layer, l, u)
        ups[k][sel, uu] = t
        lows[k][sel + b, uu] = t + 1
    children = [(lo_, up_) for lo_, up_ in zip(lows, ups)]
    idx = torch.cat([torch.arange(b), torch.arange(b)])
    return children, params.select(idx)


def refine_children(
    search: LinearBab,
    lo: torch.Tensor,
    hi: torch.Tensor,
    bounds: Bounds,
    split_layer: torch.Tensor,
    max_units: int,
    last_units: torch.Tensor | None = None,
    deadline: float | None = None,
    chunk_rows: int = 4096,
) -> Bounds:
    """Re-tighten, by linear bounds, the ranges of layers after the earliest split layer (of the
    last layer only ``last_units``, when given). Only units whose value is not fixed in some child
    are re-tightened (a fixed unit's lines are constants). Children are taken ``chunk_rows``
    bound rows at a time; past ``deadline`` the rest keep their ranges (tightening is optional:
    every range stays sound either way)."""
    lb = search.lb
    first = int(split_layer.min()) + 1
    bounds = list(bounds)
    nb = bounds[0][0].shape[0]
    for k in range(first, len(lb.units)):
        n = lb.units[k].size
        layer = lb.units[k].layer
        l, u = bounds[k]
        open_ = (layer.integer(l) != layer.integer(u)).any(0)
        if k == len(lb.units) - 1 and last_units is not None:
            keep = torch.zeros(n, dtype=torch.bool)
            keep[last_units] = True
            open_ = open_ & keep
        units = open_.nonzero().squeeze(1)
        m = int(units.numel())
        if m > max_units or not m:
            continue
        l, u = l.clone(), u.clone()
        step = max(1, chunk_rows // (2 * m))
        for s in range(0, nb, step):
            if deadline is not None and time.monotonic() > deadline:
                break
            e = min(nb, s + step)
            part = [(bl[s:e], bu[s:e]) for bl, bu in bounds[:k]]
            C = range_rows(n, units, e - s)
            val, err, _ = lb.backward(k, C, lo.expand(e - s, -1), hi.expand(e - s, -1), part)
            l[s:e], u[s:e] = narrow(l[s:e], u[s:e], units, floor_int(val + err))
        bounds[k] = (l, u)
    return bounds


class SubproblemQueue:
    """Open subproblems in chunks (bounds, row upper bounds, scores, parameters); the newest are
    taken first (depth first keeps the queue short)."""

    def __init__(self) -> None:
        self.chunks: list[tuple[Bounds, torch.Tensor, list[torch.Tensor], Params]] = []
        self.size = 0

    def push(
        self, bounds: Bounds, ub: torch.Tensor, scores: list[torch.Tensor], params: Params
    ) -> None:
        if ub.shape[0]:
            self.chunks.append((bounds, ub, scores, params))
            self.size += int(ub.shape[0])

    def pop(self, n: int) -> tuple[Bounds, torch.Tensor, list[torch.Tensor], Params]:
        parts = []
        while n and self.chunks:
            item = self.chunks.pop()
            k = int(item[1].shape[0])
            if k > n:
                self.chunks.append(_take(item, torch.arange(k - n)))
                item, k = _take(item, torch.arange(k - n, k)), n
            parts.append(item)
            n -= k
        self.size -= sum(int(p[1].shape[0]) for p in parts)
        return _cat(parts)


def _take(item, idx: torch.Tensor):  # noqa: ANN001, ANN202
    bnds, ub, sc, par = item
    return ([(l[idx], u[idx]) for l, u in bnds], ub[idx], [s[idx] for s in sc], par.select(idx))


def _cat(parts):  # noqa: ANN001, ANN202
    if len(parts) == 1:
        return parts[0]
    nl = len(parts[0][0])
    bnds = [
        (torch.cat([p[0][k][0] for p in parts]), torch.cat([p[0][k][1] for p in parts]))
        for k in range(nl)
    ]
    ub = torch.cat([p[1] for p in parts])
    sc = [torch.cat([p[2][k] for p in parts]) for k in range(nl)]
    par = Params(
        [[torch.cat([p[3].slopes[k][j] for p in parts]) for j in range(2)] for k in range(nl)],
        [[torch.cat([p[3].betas[k][j] for p in parts]) for j in range(2)] for k in range(nl)],
    )
    return bnds, ub, sc, par
