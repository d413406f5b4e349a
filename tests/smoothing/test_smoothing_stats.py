"""Tests of the Clopper-Pearson bound and the abstention test (qcert.smoothing.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from qcert.smoothing import SmoothingError, binom_test_abstain, lower_confidence_bound


def test_lower_bound_known_values() -> None:
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    # n_a = n: the alpha quantile of Beta(n, 1) is alpha^(1/n)
    for n in [1, 10, 1000, 100_000]:
        assert lower_confidence_bound(n, n, 0.001) == pytest.approx(0.001 ** (1 / n), rel=1e-12)
    # n_a = 1: the alpha quantile of Beta(1, n) is 1 - (1 - alpha)^(1/n)
    assert lower_confidence_bound(1, 50, 0.05) == pytest.approx(1 - 0.95 ** (1 / 50), rel=1e-10)
    assert lower_confidence_bound(9_900, 10_000, 0.001) == pytest.approx(
        float(stats.beta.ppf(0.001, 9_900, 101)), rel=0, abs=0
    )


@pytest.mark.parametrize(("n_a", "n"), [(1, 2), (7, 10), (50, 100), (990, 1000), (99_990, 100_000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_lower_bound_is_exact_clopper_pearson(n_a: int, n: int, alpha: float) -> None:
    p = lower_confidence_bound(n_a, n, alpha)
    assert 0 < p < n_a / n
    assert p == float(stats.beta.ppf(alpha, n_a, n - n_a + 1))
    # defining identity: P(Binomial(n, p) >= n_a) = alpha at the bound
    assert float(stats.binom.sf(n_a - 1, n, p)) == pytest.approx(alpha, rel=1e-8)


def test_lower_bound_monotone() -> None:
    n = 200
    values = [lower_confidence_bound(k, n, 0.01) for k in range(n + 1)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert lower_confidence_bound(150, 200, 0.001) < lower_confidence_bound(150, 200, 0.01)
    assert lower_confidence_bound(150, 200, 0.01) < lower_confidence_bound(1500, 2000, 0.01)


@pytest.mark.parametrize("p_true", [0.05, 0.3, 0.5, 0.77, 0.95, 0.999])
def test_lower_bound_exact_coverage(p_true: float) -> None:
    """P(bound <= p) >= 1 - alpha exactly, summing the binomial law over all outcomes."""
    n, alpha = 40, 0.1
    bounds = np.array([lower_confidence_bound(k, n, alpha) for k in range(n + 1)])
    pmf = stats.binom.pmf(np.arange(n + 1), n, p_true)
    coverage = float(pmf[bounds <= p_true].sum())
    assert coverage >= 1 - alpha - 1e-12


def test_lower_bound_coverage_by_simulation() -> None:
    rng = np.random.default_rng(12345)
    n, p_true, alpha, reps = 60, 0.8, 0.05, 20_000
    draws = rng.binomial(n, p_true, size=reps)
    table = np.array([lower_confidence_bound(k, n, alpha) for k in range(n + 1)])
    miss = float(np.mean(table[draws] > p_true))
    assert miss <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    assert miss > 0.005  # not vacuous: the bound is close to the nominal level


@pytest.mark.parametrize(
    "args",
    [(-1, 10, 0.1), (11, 10, 0.1), (1, 0, 0.1), (1, 10, 0.0), (1, 10, 1.0), (1, 10, math.nan)],
)
def test_lower_bound_rejects_bad_arguments(args: tuple[int, int, float]) -> None:
    with pytest.raises(SmoothingError):
        lower_confidence_bound(*args)
    with pytest.raises(ValueError):
        lower_confidence_bound(*args)


def test_lower_bound_rejects_non_integers() -> None:
    with pytest.raises(SmoothingError):
        lower_confidence_bound(1.5, 10, 0.1)  # type: ignore[arg-type]
    with pytest.raises(SmoothingError):
        lower_confidence_bound(True, 10, 0.1)
    assert lower_confidence_bound(np.int64(5), np.int64(10), 0.1) == lower_confidence_bound(
        5, 10, 0.1
    )


def test_abstain_rule() -> None:
    assert binom_test_abstain(0, 0, 0.001) is True
    assert binom_test_abstain(50, 50, 0.001) is True
    assert binom_test_abstain(100, 0, 0.001) is False
    assert binom_test_abstain(0, 100, 0.001) is False  # two-sided, as Cohen et al.'s PREDICT
    for n_a, n_b, alpha in [(60, 40, 0.05), (61, 39, 0.05), (70, 30, 0.001), (9, 1, 0.05)]:
        pvalue = stats.binomtest(n_a, n_a + n_b, 0.5).pvalue
        assert binom_test_abstain(n_a, n_b, alpha) is bool(pvalue > alpha)
    # p-value of 9 vs 1 is 2 * 11/1024 = 0.0215
    assert binom_test_abstain(9, 1, 0.05) is False
    assert binom_test_abstain(9, 1, 0.01) is True
    with pytest.raises(SmoothingError):
        binom_test_abstain(-1, 3, 0.05)
    with pytest.raises(SmoothingError):
        binom_test_abstain(1, 3, 2.0)


def test_abstain_rule_error_rate() -> None:
    """Under p = 1/2 the test wrongly commits with probability <= alpha (exact computation)."""
    n, alpha = 100, 0.05
    commits = [not binom_test_abstain(k, n - k, alpha) for k in range(n + 1)]
    rate = float(stats.binom.pmf(np.arange(n + 1), n, 0.5)[commits].sum())
    assert rate <= alpha
