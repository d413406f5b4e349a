"""Integer randomized smoothing: discrete Gaussian noise and a sound certified L2 radius.

>>> from qcert.smoothing import DiscreteGaussian, certified_radius, lower_confidence_bound
>>> noise = DiscreteGaussian(8.0)                       # sigma in integer input levels
>>> p = lower_confidence_bound(9_900, 10_000, 0.001)
>>> r = certified_radius(p, noise, dim=784)            # L2 radius in integer levels

See ``docs/smoothing.md`` for the derivation of the radius and why it is sound.
"""

from __future__ import annotations

from qcert.smoothing.noise import (
    MAX_SIGMA,
    RESOLUTION_BITS,
    DiscreteGaussian,
    NoiseStream,
    SmoothingError,
)
from qcert.smoothing.radius import (
    NOT_CERTIFIED,
    NUMERIC_MARGIN,
    WorstCaseCurve,
    certified_radius,
    cohen_radius,
    effective_sigma,
    exact_worst_case_probability,
    soundness_slack,
    worst_case_lower_bound,
)
from qcert.smoothing.stats import binom_test_abstain, lower_confidence_bound

__all__ = [
    "MAX_SIGMA",
    "NOT_CERTIFIED",
    "NUMERIC_MARGIN",
    "RESOLUTION_BITS",
    "DiscreteGaussian",
    "NoiseStream",
    "SmoothingError",
    "WorstCaseCurve",
    "binom_test_abstain",
    "certified_radius",
    "cohen_radius",
    "effective_sigma",
    "exact_worst_case_probability",
    "lower_confidence_bound",
    "soundness_slack",
    "worst_case_lower_bound",
]
