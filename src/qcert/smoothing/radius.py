"""Sound L2 certified radius for randomized smoothing with sampled discrete Gaussian noise.

Main result (derivation in ``docs/smoothing.md``): let ``noise = DiscreteGaussian(sigma)`` and
``sigma_eff = effective_sigma(noise)`` (slightly below ``sigma``: ``sigma_eff ~ sigma * (1 -
1/(24 sigma^2))``). Let ``eta = dim * noise.tv_bound``. If ``P(f(x + delta) = c) >= p`` for
the noise actually sampled (i.i.d. over ``dim`` integer coordinates), then for every integer
vector ``v``

    P(f(x + v + delta) = c) >= Phi(Phi^{-1}(p - eta) - ||v||_2 / sigma_eff) - eta,

whatever ``dim`` is. Hence ``c`` keeps probability ``> 1/2`` (so the smoothed classifier still
returns ``c``) for all integer ``v`` with ``||v||_2 <= certified_radius(p, sigma, dim)``.
Radii are in integer input levels, like ``sigma``.
"""

from __future__ import annotations

import bisect
import math
import weakref
from fractions import Fraction

import numpy as np
from scipy import special

from qcert.smoothing.noise import (
    RESOLUTION_BITS,
    DiscreteGaussian,
    SmoothingError,
    validate_sigma,
)

__all__ = [
    "NOT_CERTIFIED",
    "NUMERIC_MARGIN",
    "WorstCaseCurve",
    "certified_radius",
    "cohen_radius",
    "effective_sigma",
    "exact_worst_case_probability",
    "soundness_slack",
    "worst_case_lower_bound",
]

#: Returned by :func:`certified_radius` when nothing is certified (not even ``v = 0``).
NOT_CERTIFIED = -1.0
#: Extra probability margin covering floating-point error in ``p_lower`` and ``Phi^{-1}``.
NUMERIC_MARGIN = 1e-12
#: Relative safety margin on the computed maximal slope (covers ndtri / log error, ~1e-14).
_SLOPE_REL_MARGIN = 1e-9


def _noise(sigma: float | DiscreteGaussian) -> DiscreteGaussian:
    if isinstance(sigma, DiscreteGaussian):
        return sigma
    return DiscreteGaussian.cached(sigma)  # validates sigma


def _check_probability(p: object, name: str = "p_lower") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise SmoothingError(f"{name} must be a real number, got {type(p).__name__}")
    value = float(p)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise SmoothingError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_dim(dim: object) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) < 1:
        raise SmoothingError(f"dim must be a positive integer (input dimension), got {dim!r}")
    return int(dim)


def _gaussian_z_scores(log_tail: np.ndarray) -> np.ndarray:
    """``a`` with ``Phi(-a) = exp(log_tail)`` (Gaussian z-score of an upper tail), refined."""
    a = -special.ndtri_exp(log_tail)
    for _ in range(2):  # Newton on log Phi(-a) = log_tail; d/da log Phi(-a) = -h(a)
        log_sf = special.log_ndtr(-a)
        hazard = np.exp(-0.5 * a * a - 0.5 * math.log(2.0 * math.pi) - log_sf)
        a = a + (log_sf - log_tail) / hazard
    return a


def _max_slope(noise: DiscreteGaussian) -> float:
    """Upper bound on ``sup_j (a_{j+1} - a_j)`` for the analysis distribution (see docs)."""
    t = noise.support_bound
    a = _gaussian_z_scores(np.asarray(noise.log_ideal_tail[1 : t + 2]))  # a_1 .. a_{T+1}
    slopes = np.empty(t + 1)
    slopes[0] = 2.0 * a[0]  # a_1 - a_0 with a_0 = -a_1 (symmetry)
    slopes[1:] = np.diff(a)  # a_{j+1} - a_j, j = 1..T
    # Geometric tail beyond T (ratio rho = t_{T+1}/t_T): every later slope is at most
    # -log(rho) / h(a_{T+1}) with h(a_{T+1}) = phi(a_{T+1}) / t_{T+1} (h increasing).
    a_last = float(a[-1])
    log_phi = -0.5 * a_last * a_last - 0.5 * math.log(2.0 * math.pi)
    tail_slope = -noise.log_ideal_tail_ratio * math.exp(
        float(noise.log_ideal_tail[t + 1]) - log_phi
    )
    worst = max(float(slopes.max()), tail_slope)
    if not (math.isfinite(worst) and worst > 0.0):  # pragma: no cover - defensive
        raise AssertionError("slope computation failed")
    return worst * (1.0 + _SLOPE_REL_MARGIN) + 1e-15


_SIGMA_EFF: weakref.WeakKeyDictionary[DiscreteGaussian, float] = weakref.WeakKeyDictionary()


def effective_sigma(sigma: float | DiscreteGaussian) -> float:
    """The effective Gaussian noise level ``sigma_eff <= sigma`` of the sampled noise.

    Guarantee: for every integer shift ``m``, the hypothesis-testing trade-off between the
    analysis distribution ``P~`` (within ``tv_bound`` of the sampled noise) and ``P~ + m`` is at
    least the Gaussian one, ``T(P~, P~ + m) >= G_{|m| / sigma_eff}``; by composition the same holds
    for integer vectors with ``||v||_2 / sigma_eff`` in any dimension.
    """
    noise = _noise(sigma)
    value = _SIGMA_EFF.get(noise)
    if value is None:
        value = 1.0 / _max_slope(noise)
        _SIGMA_EFF[noise] = value
    return value


def soundness_slack(sigma: float | DiscreteGaussian, dim: int) -> float:
    """``eta = dim * tv_bound``: total-variation distance between the ``dim``-dimensional sampled
    noise and the analysis distribution (an upper bound; product TV is subadditive)."""
    return min(1.0, _check_dim(dim) * _noise(sigma).tv_bound)


def worst_case_lower_bound(
    p_lower: float, shift_norm: float, sigma: float | DiscreteGaussian, dim: int
) -> float:
    """Lower bound on ``P(f(x + v + delta) = c)`` over integer ``v`` with ``||v||_2 <= shift_norm``.

    Guarantee: if ``P(f(x + delta) = c) >= p_lower`` under the sampled noise in dimension
    ``dim``, the return value is ``<=`` that probability at every such ``x + v``.
    """
    p = _check_probability(p_lower)
    norm = float(shift_norm)
    if not (norm >= 0.0 and math.isfinite(norm)):
        raise SmoothingError(f"shift_norm must be finite and >= 0, got {shift_norm!r}")
    noise = _noise(sigma)
    eta = soundness_slack(noise, dim)
    lo = p - eta - NUMERIC_MARGIN
    if lo <= 0.0:
        return 0.0
    bound = float(special.ndtr(special.ndtri(lo) - norm / effective_sigma(noise)))
    return max(0.0, bound - eta - NUMERIC_MARGIN)


def certified_radius(p_lower: float, sigma: float | DiscreteGaussian, dim: int) -> float:
    """Certified L2 radius (integer input levels) for discrete Gaussian smoothing.

    Guarantee: if ``P(f(x + delta) = c_A) >= p_lower`` where ``delta`` is the noise *actually
    sampled* by :class:`DiscreteGaussian` ``(sigma)`` i.i.d. on ``dim`` integer coordinates, and
    ``R = certified_radius(p_lower, sigma, dim) >= 0``, then for every integer vector ``v`` with
    ``||v||_2 <= R`` (``v = 0`` included) ``P(f(x + v + delta) = c_A) > 1/2`` strictly, so the
    smoothed classifier returns ``c_A`` at ``x + v``. Returns :data:`NOT_CERTIFIED` (``-1.0``)
    when this cannot be guaranteed even at ``v = 0`` (``p_lower`` at or too close to 1/2).

    ``R = sigma_eff * (Phi^{-1}(p_lower - eta - m) - Phi^{-1}(1/2 + eta + m))`` with
    ``sigma_eff = effective_sigma(sigma)``, ``eta = dim * tv_bound``, ``m = NUMERIC_MARGIN``.
    """
    p = _check_probability(p_lower)
    noise = _noise(sigma)
    eta = soundness_slack(noise, dim)
    lo = p - eta - NUMERIC_MARGIN
    hi = 0.5 + eta + NUMERIC_MARGIN
    if lo <= hi:
        return NOT_CERTIFIED
    radius = effective_sigma(noise) * (float(special.ndtri(lo)) - float(special.ndtri(hi)))
    return max(0.0, radius)


def cohen_radius(p_lower: float, sigma: float) -> float:
    """Cohen et al.'s radius ``sigma * Phi^{-1}(p_lower)`` for *continuous* Gaussian noise.

    For comparison only: it is NOT a sound radius for discrete Gaussian noise (see docs).
    Returns :data:`NOT_CERTIFIED` when ``p_lower <= 1/2``.
    """
    p = _check_probability(p_lower)
    s = validate_sigma(sigma)
    if p <= 0.5:
        return NOT_CERTIFIED
    return s * float(special.ndtri(p))


class WorstCaseCurve:
    """Exact Neyman-Pearson worst case for one integer shift ``v`` under the sampled noise.

    For ``P`` = law of ``delta`` (i.i.d. table noise, ``d = len(v)`` coordinates) and ``Q`` = law
    of ``v + delta``, ``curve.exact(p)`` returns ``min Q(A)`` over all *randomized* sets ``A``
    with ``P(A) >= p``, as an exact rational (lattice points sorted by the exact likelihood ratio
    ``P/Q``, filled greedily, fractional at the boundary). This is the smallest possible value of
    ``P(f(x + v + delta) = c)`` given ``P(f(x + delta) = c) >= p``. ``curve.value(p)`` is a
    float64 evaluation within ``1e-9`` of it. Feasible for ``(2T+1)^d <= max_points``.
    """

    def __init__(
        self,
        v: tuple[int, ...] | list[int] | np.ndarray,
        sigma: float | DiscreteGaussian,
        *,
        max_points: int = 2_000_000,
    ) -> None:
        shift = np.asarray(v)
        if shift.ndim != 1 or shift.size == 0 or not np.issubdtype(shift.dtype, np.integer):
            raise SmoothingError(f"v must be a non-empty 1-D integer vector, got {v!r}")
        self.v = tuple(int(x) for x in shift)
        self.noise = _noise(sigma)
        t = self.noise.support_bound
        d = len(self.v)
        n_side = 2 * t + 1
        if n_side**d > max_points:
            raise SmoothingError(f"{n_side}^{d} lattice points exceed max_points={max_points}")
        self.dim = d
        w = self.noise.weights
        with np.errstate(divide="ignore"):
            logw = np.log(w.astype(np.float64))
        grid = np.indices((n_side,) * d).reshape(d, -1)  # table indices k + T of each point
        log_p = np.zeros(grid.shape[1])
        log_q = np.zeros(grid.shape[1])
        q_idx = grid - np.asarray(self.v)[:, None]
        q_inside = np.all((q_idx >= 0) & (q_idx < n_side), axis=0)
        q_idx_c = np.clip(q_idx, 0, n_side - 1)
        for i in range(d):
            log_p += logw[grid[i]]
            log_q += logw[q_idx_c[i]]
        log_q[~q_inside] = -np.inf
        keep = np.isfinite(log_p)  # points with P = 0 never help (ratio 0)
        grid, q_idx_c, q_inside = grid[:, keep], q_idx_c[:, keep], q_inside[keep]
        log_p, log_q = log_p[keep], log_q[keep]
        with np.errstate(invalid="ignore"):
            key = log_p - log_q  # +inf where Q = 0
        order = np.argsort(-key, kind="stable")
        self._grid = grid[:, order]
        self._q_idx = q_idx_c[:, order]
        self._q_inside = q_inside[order]
        self._key = key[order]
        p_f = np.exp(log_p[order] - d * RESOLUTION_BITS * math.log(2.0))
        q_f = np.where(
            self._q_inside, np.exp(log_q[order] - d * RESOLUTION_BITS * math.log(2.0)), 0.0
        )
        self._p_f, self._q_f = p_f, q_f
        self._cum_p_f = np.cumsum(p_f)
        self._cum_q_f = np.cumsum(q_f)
        self._exact: tuple[list[int], list[int], list[int], list[int]] | None = None

    def value(self, p_lower: float) -> float:
        """Float64 evaluation of the worst case (absolute error below ``1e-9``)."""
        p = _check_probability(p_lower)
        if p == 0.0:
            return 0.0
        i = int(np.searchsorted(self._cum_p_f, p, side="left"))
        i = min(i, len(self._p_f) - 1)
        prev_p = float(self._cum_p_f[i - 1]) if i > 0 else 0.0
        prev_q = float(self._cum_q_f[i - 1]) if i > 0 else 0.0
        frac = (p - prev_p) / self._p_f[i]
        return float(min(1.0, max(0.0, prev_q + frac * self._q_f[i])))

    def exact(self, p_lower: float | Fraction) -> Fraction:
        """The exact worst case ``min Q(A)`` s.t. ``P(A) >= p_lower``, as a ``Fraction``."""
        p = Fraction(p_lower)
        if not (0 <= p <= 1):
            raise SmoothingError(f"p_lower must be in [0, 1], got {p_lower!r}")
        if p == 0:
            return Fraction(0)
        wp, wq, cum_p, cum_q = self._exact_tables()
        denom = 1 << (RESOLUTION_BITS * self.dim)
        target = p * denom
        i = bisect.bisect_left(cum_p, target)
        prev_p = cum_p[i - 1] if i > 0 else 0
        prev_q = cum_q[i - 1] if i > 0 else 0
        return (prev_q + (target - prev_p) * Fraction(wq[i], wp[i])) / denom

    def _exact_tables(self) -> tuple[list[int], list[int], list[int], list[int]]:
        if self._exact is not None:
            return self._exact
        w = [int(x) for x in self.noise.weights]
        n = self._grid.shape[1]
        grid_t = self._grid.T.tolist()
        qidx_t = self._q_idx.T.tolist()
        inside = self._q_inside.tolist()
        wp = [math.prod(w[k] for k in pt) for pt in grid_t]
        wq = [math.prod(w[k] for k in qt) if ins else 0 for qt, ins in zip(qidx_t, inside)]
        # The float order is exact except among near-ties (float log error << 1e-9): re-sort
        # each run of keys closer than 1e-9 by the exact ratio (integer key wp*2^S // wq is
        # strictly monotone in the ratio since all denominators are < 2^(62 d)).
        order = list(range(n))
        key = self._key
        shift = 2 * RESOLUTION_BITS * self.dim + 8
        start = 0
        while start < n:
            end = start + 1
            while end < n and (
                (math.isinf(key[start]) and math.isinf(key[end]))
                or (not math.isinf(key[end - 1]) and key[end - 1] - key[end] < 1e-9)
            ):
                end += 1
            if end - start > 1 and not math.isinf(key[start]):
                block = order[start:end]
                block.sort(key=lambda j: (wp[j] << shift) // wq[j], reverse=True)
                order[start:end] = block
            start = end
        wp = [wp[j] for j in order]
        wq = [wq[j] for j in order]
        cum_p: list[int] = []
        cum_q: list[int] = []
        acc_p = acc_q = 0
        for a, b in zip(wp, wq):
            acc_p += a
            acc_q += b
            cum_p.append(acc_p)
            cum_q.append(acc_q)
        self._exact = (wp, wq, cum_p, cum_q)
        return self._exact


def exact_worst_case_probability(
    p_lower: float | Fraction, v: tuple[int, ...] | list[int], sigma: float | DiscreteGaussian
) -> Fraction:
    """Exact ``min P(f(x + v + delta) = c)`` given ``P(f(x + delta) = c) >= p_lower``.

    Computed by enumeration for the sampled noise (see :class:`WorstCaseCurve`); meant for
    ``len(v) <= 2`` (or 3 with small ``sigma``). The smoothed classifier is guaranteed to keep
    class ``c`` at shift ``v`` iff this is ``> 1/2``.
    """
    return WorstCaseCurve(v, sigma).exact(p_lower)
