"""Soundness tests of the certified radius for discrete Gaussian smoothing (qcert.smoothing).

The radius is checked against the exact Neyman-Pearson worst case of the noise actually sampled
(the integer table), computed by enumerating every lattice point in 1, 2 and 3 dimensions, and
against exact lattice computations for the ideal discrete Gaussian in higher dimensions.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from scipy import special

from qcert.smoothing import (
    NOT_CERTIFIED,
    DiscreteGaussian,
    SmoothingError,
    WorstCaseCurve,
    certified_radius,
    effective_sigma,
    exact_worst_case_probability,
    soundness_slack,
    worst_case_lower_bound,
)

SIGMAS = [0.5, 1.0, 2.0, 3.0, 5.0, 8.0]
P_LOWERS = [
    0.5 + 1e-9,
    0.5000001,
    0.501,
    0.51,
    0.55,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
    0.999,
    0.9999,
    0.99999,
    0.999999,
    1 - 1e-9,
]
FLOAT_TOL = 1e-9  # documented accuracy of WorstCaseCurve.value


def _robust(curve: WorstCaseCurve, p: float) -> bool:
    """Exact decision ``worst case > 1/2`` (float fast path, exact rational near the boundary)."""
    value = curve.value(p)
    if value > 0.5 + FLOAT_TOL:
        return True
    if value < 0.5 - FLOAT_TOL:
        return False
    return curve.exact(p) > Fraction(1, 2)


def _shifts(dim: int, max_norm: float) -> list[tuple[int, ...]]:
    """Nonzero integer shifts with v_1 >= ... >= v_d >= 0 and ||v|| <= max_norm.

    By the sign symmetry of the noise and exchangeability of its coordinates these represent
    every integer shift of that norm.
    """
    bound = int(math.floor(max_norm))
    out: list[tuple[int, ...]] = []

    def rec(prefix: tuple[int, ...], top: int, sq: int) -> None:
        if len(prefix) == dim:
            if sq > 0:
                out.append(prefix)
            return
        for x in range(min(top, bound), -1, -1):
            if sq + x * x <= max_norm**2:
                rec((*prefix, x), x, sq + x * x)

    rec((), bound, 0)
    return out


def _check_radius_sound(sigma: float, dim: int, p_values: list[float]) -> int:
    noise = DiscreteGaussian(sigma)
    radii = {p: certified_radius(p, noise, dim) for p in p_values}
    checked = 0
    for v in _shifts(dim, max(radii.values())):
        norm_sq = sum(x * x for x in v)
        curve = WorstCaseCurve(v, noise)
        for p, r in radii.items():
            if r >= 0 and norm_sq <= r * r:
                assert _robust(curve, p), (sigma, v, p, r)
                checked += 1
    return checked


# ------------------------------------------------------------------ effective sigma


def _mp_max_slope(sigma: float, t: int) -> float:
    """Independent 50-digit computation of the maximal z-score slope of the ideal DG."""
    mpmath.mp.dps = 50
    s = mpmath.mpf(sigma)
    big = int(20 * sigma) + 40
    terms = [mpmath.exp(-(mpmath.mpf(k) ** 2) / (2 * s * s)) for k in range(big + 1)]
    z = terms[0] + 2 * mpmath.fsum(terms[1:])
    tails = [mpmath.fsum(terms[j:]) / z for j in range(t + 3)]
    a = [mpmath.sqrt(2) * mpmath.erfinv(1 - 2 * tails[j]) for j in range(t + 2)]
    slopes = [a[j + 1] - a[j] for j in range(t + 1)]
    assert abs(a[0] + a[1]) < mpmath.mpf(10) ** -30  # symmetry a_0 = -a_1
    # geometric-tail bound: -log(t_{T+1}/t_T) * t_{T+1} / phi(a_{T+1})
    phi = mpmath.npdf(a[t + 1])
    tail_bound = -mpmath.log(tails[t + 1] / tails[t]) * tails[t + 1] / phi
    return float(max(max(slopes), tail_bound))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 8.0, 20.0])
def test_effective_sigma_matches_high_precision(sigma: float) -> None:
    noise = DiscreteGaussian(sigma)
    slope = _mp_max_slope(sigma, noise.support_bound)
    eff = effective_sigma(noise)
    assert eff <= 1.0 / slope  # conservative
    assert eff == pytest.approx(1.0 / slope, rel=1e-8)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0, 8.0, 30.0, 64.0, 255.0])
def test_effective_sigma_is_close_to_sigma(sigma: float) -> None:
    eff = effective_sigma(sigma)
    assert eff < sigma
    # asymptotically sigma_eff ~ sigma (1 - 1/(24 sigma^2)) (midpoint-rule correction)
    assert 1 - eff / sigma == pytest.approx(1 / (24 * sigma**2), rel=0.15)


def test_effective_sigma_small_sigma_values() -> None:
    assert effective_sigma(0.5) == pytest.approx(0.4018676, rel=1e-6)
    assert effective_sigma(1.0) == pytest.approx(0.9562422, rel=1e-6)
    assert effective_sigma(DiscreteGaussian(2.0)) == effective_sigma(2.0)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 8.0])
def test_effective_sigma_cannot_be_increased(sigma: float) -> None:
    """sigma_eff is tight: with shift 1 in 1-D the Gaussian bound is attained at a vertex, so
    any larger effective sigma would claim a worst case above the true one."""
    noise = DiscreteGaussian(sigma)
    curve = WorstCaseCurve((1,), noise)
    cum = np.cumsum(noise.weights.astype(np.float64)) / (1 << 62)
    vertices = [float(c) for c in cum if 0.5 < c < 1 - 1e-12]
    eff = effective_sigma(noise)

    def gap(s: float) -> float:
        return min(
            curve.value(p) - float(special.ndtr(special.ndtri(p) - 1.0 / s)) for p in vertices
        )

    assert gap(eff) > -1e-13
    assert gap(eff * (1 + 1e-6)) < -1e-9


# ------------------------------------------------------------------ exact worst case


def test_exact_worst_case_matches_one_dimensional_formula() -> None:
    noise = DiscreteGaussian(1.0)
    t = noise.support_bound
    w = [int(x) for x in noise.weights]
    m = 2
    # p = P(delta <= k - 1): the worst set is {delta <= k - 1}, so the value is P(delta <= k-1-m)
    for k in range(-t + 1, t + 1):
        p = Fraction(sum(w[: k - 1 + t + 1]), 1 << 62)
        expected = Fraction(sum(w[: max(0, k - 1 - m + t + 1)]), 1 << 62)
        assert exact_worst_case_probability(p, (m,), noise) == expected


def test_exact_worst_case_basic_properties() -> None:
    noise = DiscreteGaussian(1.0)
    assert exact_worst_case_probability(0.7, (0,), noise) == Fraction(0.7)
    assert exact_worst_case_probability(0.0, (3, 1), noise) == 0
    assert exact_worst_case_probability(1.0, (1, 1), noise) < 1  # x' + delta leaves the box
    for v, mirror in [((2, 1), (-2, 1)), ((2, 1), (1, 2)), ((3, 0), (0, -3))]:
        a = exact_worst_case_probability(0.9, v, noise)
        b = exact_worst_case_probability(0.9, mirror, noise)
        assert a == b
    curve = WorstCaseCurve((2, 1), noise)
    for p in [0.5, 0.8, 0.99, 0.999999]:
        assert abs(curve.value(p) - float(curve.exact(p))) < FLOAT_TOL
    # monotone in p and in the shift along a ray
    values = [curve.exact(p) for p in np.linspace(0, 1, 21)]
    assert values == sorted(values)
    assert exact_worst_case_probability(0.9, (1,), noise) > exact_worst_case_probability(
        0.9, (2,), noise
    )
    with pytest.raises(SmoothingError):
        WorstCaseCurve((1.5,), noise)  # type: ignore[arg-type]
    with pytest.raises(SmoothingError):
        WorstCaseCurve((1,) * 6, noise)


@pytest.mark.parametrize(
    ("sigma", "m", "k", "deficit"), [(2.0, 5, 5, 1.02e-2), (8.0, 23, 23, 7.46e-4)]
)
def test_cohen_tradeoff_deficit_magnitude(sigma: float, m: int, k: int, deficit: float) -> None:
    """At a vertex p = P(delta <= k - 1) the exact worst case for shift m is below Cohen's
    continuous prediction Phi(Phi^{-1}(p) - m/sigma) by about 1.0e-2 at sigma=2 and 7.5e-4 at
    sigma=8: larger than the 3e-3 / 1e-4 sometimes quoted, so a correction calibrated on those
    values would be unsound. sigma_eff covers it."""
    noise = DiscreteGaussian(sigma)
    t = noise.support_bound
    w = [int(x) for x in noise.weights]
    p = Fraction(sum(w[: k + t]), 1 << 62)
    worst = exact_worst_case_probability(p, (m,), noise)
    assert worst == Fraction(sum(w[: k - m + t]), 1 << 62)
    cohen = float(special.ndtr(special.ndtri(float(p)) - m / sigma))
    assert cohen - float(worst) == pytest.approx(deficit, rel=0.03)
    ours = float(special.ndtr(special.ndtri(float(p)) - m / effective_sigma(noise)))
    assert ours <= float(worst)


def test_cohen_tradeoff_deficit_maximum() -> None:
    """docs/smoothing.md §2: the largest deficit for p <= 0.999 at sigma = 2 is 1.22e-2 (m = 6,
    p = 0.99727, inside a segment of the worst-case polygon, not at a vertex)."""
    p = 0.9972720270784038
    worst = float(exact_worst_case_probability(p, (6,), 2.0))
    cohen = float(special.ndtr(special.ndtri(p) - 6 / 2.0))
    assert cohen - worst == pytest.approx(1.2205e-2, rel=1e-3)


def test_cohen_radius_contradicted_at_extreme_p() -> None:
    """docs/smoothing.md §4: Cohen's radius sigma * Phi^{-1}(p) is not sound for the sampled
    table at extreme p (sigma = 8, d = 2), while the radius with sigma_eff is."""
    p = 0.9999999999987702
    v = (15, 54)
    norm = math.hypot(*v)
    assert 8.0 * float(special.ndtri(p)) == pytest.approx(56.0447, abs=1e-4)
    assert 8.0 * float(special.ndtri(p)) >= norm
    worst = WorstCaseCurve(v, 8.0).exact(p)
    assert worst < Fraction(1, 2)
    assert float(worst) == pytest.approx(0.49999815, abs=1e-8)
    assert certified_radius(p, 8.0, 2) < norm


def test_radius_does_not_grow_with_dimension() -> None:
    """eta = d * tv_bound only lowers the radius; at sigma = 8, p = 0.999 it changes it by about
    1e-8 (relative) from d = 1 to d = 150,528 (docs/smoothing.md §4)."""
    for p in (0.6, 0.9, 0.999, 1 - 1e-9):
        radii = [certified_radius(p, 8.0, d) for d in (1, 2, 784, 3072, 150_528)]
        assert radii == sorted(radii, reverse=True)
    r1, r2 = certified_radius(0.999, 8.0, 1), certified_radius(0.999, 8.0, 150_528)
    assert 5e-9 < (r1 - r2) / r1 < 2e-8


# ------------------------------------------------------------------ soundness of the radius


@pytest.mark.parametrize("sigma", SIGMAS)
def test_radius_sound_in_one_dimension(sigma: float) -> None:
    assert _check_radius_sound(sigma, 1, P_LOWERS + [1.0]) > 0


@pytest.mark.parametrize("sigma", SIGMAS)
def test_radius_sound_in_two_dimensions(sigma: float) -> None:
    assert _check_radius_sound(sigma, 2, P_LOWERS) > 0


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_radius_sound_in_three_dimensions(sigma: float) -> None:
    assert _check_radius_sound(sigma, 3, P_LOWERS) > 0


@pytest.mark.parametrize(("sigma", "dim"), [(0.5, 2), (1.0, 2), (2.0, 2), (3.0, 1), (8.0, 1)])
def test_tradeoff_bound_holds_exactly(sigma: float, dim: int) -> None:
    """The theorem behind the radius: exact worst case >= worst_case_lower_bound, for all p."""
    noise = DiscreteGaussian(sigma)
    grid = np.concatenate([np.linspace(0.0, 1.0, 201), 1 - np.logspace(-3, -12, 19)])
    for v in _shifts(dim, 6 * sigma + 2):
        curve = WorstCaseCurve(v, noise)
        norm = math.sqrt(sum(x * x for x in v))
        for p in grid:
            bound = worst_case_lower_bound(float(p), norm, noise, dim)
            assert curve.value(float(p)) >= bound - FLOAT_TOL, (v, p)


def _ideal_dg_pmf(sigma: float) -> np.ndarray:
    k = np.arange(-int(12 * sigma) - 12, int(12 * sigma) + 13)
    p = np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma * sigma))
    return p / p.sum()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("pattern", [(1,), (2,), (2, 1), (3, 1, 1)])
def test_tradeoff_bound_in_high_dimension(sigma: float, pattern: tuple[int, ...]) -> None:
    """Dimension-free check for the ideal discrete Gaussian along v = (pattern repeated r times).

    There the likelihood ratio is a monotone function of the lattice variable S = <v, delta>,
    whose exact law is a convolution, so the worst case is exact for any dimension.
    """
    base = _ideal_dg_pmf(sigma)
    eff = effective_sigma(sigma)
    ps = np.concatenate([np.linspace(0.0, 1.0, 401)[:-1], 1 - np.logspace(-3, -13, 41)])
    law = np.array([1.0])
    offset = 0
    norm_sq = 0
    for r in range(1, 33):
        for m in pattern:
            scaled = np.zeros((len(base) - 1) * m + 1)
            scaled[::m] = base  # law of m * delta_i on the integers
            law = np.convolve(law, scaled)
            offset += (len(base) - 1) // 2 * m
            norm_sq += m * m
        cdf = np.concatenate([[0.0], np.cumsum(law)])  # cdf[i] = P(S < i - offset)
        idx = np.arange(len(cdf))
        # worst set {S < s}: P-mass cdf[i], Q-mass P(S + |v|^2 < s) = cdf[i - |v|^2]
        q = np.where(idx >= norm_sq, cdf[np.clip(idx - norm_sq, 0, None)], 0.0)
        worst = np.interp(ps, cdf, q)
        bound = special.ndtr(special.ndtri(ps) - math.sqrt(norm_sq) / eff)
        assert np.all(worst >= bound - 1e-12), (sigma, pattern, r)


@pytest.mark.parametrize("sigma", [8.0, 12.0, 30.0, 64.0])
@pytest.mark.parametrize("dim", [784, 3 * 32 * 32, 3 * 224 * 224])
def test_radius_not_much_below_cohen(sigma: float, dim: int) -> None:
    from qcert.smoothing import cohen_radius  # the continuous-Gaussian radius, for reference

    for p in np.linspace(0.6, 0.999, 41):
        ours = certified_radius(float(p), sigma, dim)
        cohen = cohen_radius(float(p), sigma)
        assert cohen * 0.98 <= ours < cohen
        assert ours >= cohen * (1 - 1e-3)


def test_radius_values_and_abstain() -> None:
    from qcert.smoothing import cohen_radius

    for p in [0.0, 0.3, 0.5, 0.5 + 1e-13]:
        assert certified_radius(p, 2.0, 784) == NOT_CERTIFIED
        assert cohen_radius(min(p, 0.5), 2.0) == NOT_CERTIFIED
    assert 0 <= certified_radius(0.5 + 1e-6, 2.0, 784) < 1e-5
    r = certified_radius(0.9, 8.0, 784)
    assert r == pytest.approx(effective_sigma(8.0) * special.ndtri(0.9), rel=1e-9)
    assert certified_radius(1.0, 8.0, 784) == pytest.approx(
        effective_sigma(8.0) * special.ndtri(1 - 1e-12 - soundness_slack(8.0, 784)), rel=1e-9
    )
    # monotone in p, non-increasing in the dimension (the TV slack grows with it)
    ps = np.linspace(0.5, 1.0, 101)
    radii = [certified_radius(float(p), 3.0, 10) for p in ps]
    assert radii == sorted(radii)
    assert certified_radius(0.99, 3.0, 1) >= certified_radius(0.99, 3.0, 10**9)
    assert soundness_slack(3.0, 784) == 784 * DiscreteGaussian(3.0).tv_bound
    assert soundness_slack(3.0, 10**30) == 1.0
    assert certified_radius(0.999, 3.0, 10**30) == NOT_CERTIFIED


@pytest.mark.parametrize(
    "args",
    [
        (math.nan, 1.0, 10),
        (1.5, 1.0, 10),
        (-0.1, 1.0, 10),
        ("0.9", 1.0, 10),
        (0.9, 0.0, 10),
        (0.9, math.inf, 10),
        (0.9, 1.0, 0),
        (0.9, 1.0, True),
        (0.9, 1.0, 2.5),
    ],
)
def test_radius_rejects_bad_arguments(args: tuple[object, object, object]) -> None:
    with pytest.raises(ValueError):
        certified_radius(*args)  # type: ignore[arg-type]


def test_worst_case_lower_bound_properties() -> None:
    assert worst_case_lower_bound(0.9, 0.0, 2.0, 1) == pytest.approx(0.9, abs=1e-11)
    assert worst_case_lower_bound(0.9, 0.0, 2.0, 1) < 0.9
    r = certified_radius(0.95, 2.0, 50)
    assert worst_case_lower_bound(0.95, r, 2.0, 50) >= 0.5 - 1e-15
    assert worst_case_lower_bound(0.95, r * 1.001, 2.0, 50) < 0.5
    with pytest.raises(SmoothingError):
        worst_case_lower_bound(0.9, -1.0, 2.0, 1)


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [12.0, 16.0])
def test_radius_sound_in_two_dimensions_larger_sigma(sigma: float) -> None:
    assert _check_radius_sound(sigma, 2, P_LOWERS + [1.0]) > 0
