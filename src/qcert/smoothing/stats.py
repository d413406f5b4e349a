"""Statistics for randomized smoothing (Cohen et al., ICML 2019): confidence bound and abstain test.

Both are exact binomial procedures: the guarantees hold for any number of samples, not only
asymptotically.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from qcert.smoothing.noise import SmoothingError

__all__ = ["binom_test_abstain", "lower_confidence_bound"]


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise SmoothingError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise SmoothingError(f"alpha must be a real number, got {type(alpha).__name__}")
    a = float(alpha)
    if not (0.0 < a < 1.0):  # also rejects NaN
        raise SmoothingError(f"alpha must be in (0, 1), got {a}")
    return a


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower confidence bound on a binomial proportion.

    Guarantee: if ``n_a ~ Binomial(n, p)`` then ``P(lower_confidence_bound(n_a, n, alpha) <= p)
    >= 1 - alpha`` for every ``p``. Equals the ``alpha`` quantile of ``Beta(n_a, n - n_a + 1)``
    (0 when ``n_a = 0``), i.e. the ``p`` solving ``P(Binomial(n, p) >= n_a) = alpha``; it is what
    Cohen et al.'s ``proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]`` returns.
    """
    n_a = _check_count(n_a, "n_a")
    n = _check_count(n, "n")
    a = _check_alpha(alpha)
    if n == 0:
        raise SmoothingError("n must be >= 1")
    if n_a > n:
        raise SmoothingError(f"n_a must be <= n, got n_a={n_a}, n={n}")
    if n_a == 0:
        return 0.0
    bound = float(stats.beta.ppf(a, n_a, n - n_a + 1))
    if not math.isfinite(bound):  # pragma: no cover - defensive
        raise SmoothingError(f"Clopper-Pearson bound is not finite for n_a={n_a}, n={n}")
    return bound


def binom_test_abstain(n_a: int, n_b: int, alpha: float) -> bool:
    """Cohen et al.'s PREDICT abstention rule: ``True`` (abstain) unless the top class wins.

    Two-sided exact binomial test of ``n_a`` successes in ``n_a + n_b`` trials against ``p =
    1/2``: abstain iff its p-value is ``> alpha`` (and always when ``n_a + n_b = 0``). Guarantee
    (Cohen et al., Thm. 2): when not abstaining, the returned class differs from the smoothed
    classifier's with probability at most ``alpha``.
    """
    n_a = _check_count(n_a, "n_a")
    n_b = _check_count(n_b, "n_b")
    a = _check_alpha(alpha)
    if n_a + n_b == 0:
        return True
    return bool(stats.binomtest(n_a, n_a + n_b, 0.5).pvalue > a)
