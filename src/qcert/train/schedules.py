"""Schedules of certified training: a QAT warm-up, linear ramps of ε, κ and λ, and the
learning rate (constant during warm-up and ramp, then cosine decay).

Everything is a function of the *progress* ``p`` in [0, 1]: the share of the planned steps done,
or, under a time budget, the larger of that and the share of the budget used. A budgeted run thus
completes its whole schedule (warm-up, ramp, decay) inside the budget, however fast the machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RampSchedule", "progress_of"]


def progress_of(step: int, total_steps: int, seconds: float, budget_s: float | None) -> float:
    """Training progress in [0, 1]: steps done over planned, or time used over the budget if
    that is larger."""
    p = step / max(1, total_steps)
    if budget_s is not None and budget_s > 0:
        p = max(p, seconds / budget_s)
    return min(1.0, p)


@dataclass(frozen=True)
class RampSchedule:
    """Where a point of training sits, as shares of the whole (progress ``p``).

    * ``p < warmup``: plain quantization-aware training (ε = κ = λ = 0);
    * ``warmup ≤ p < warmup + ramp``: ε, κ and λ grow linearly from 0 to their final values
      (QA-IBP: ε to ``eps + eps_margin``, κ to ``kappa``, λ to ``lam``);
    * the rest: all held at their final values while the learning rate decays (cosine) to
      ``lr_floor`` times its initial value.
    """

    warmup: float
    ramp: float
    lr_floor: float = 0.02

    def __post_init__(self) -> None:
        if not (0.0 <= self.warmup and 0.0 <= self.ramp and self.warmup + self.ramp <= 1.0):
            raise ValueError("warmup and ramp must be non-negative shares summing to at most 1")

    def ramp_factor(self, p: float) -> float:
        """0 during warm-up, rising linearly to 1 over the ramp, then 1."""
        if p < self.warmup:
            return 0.0
        if self.ramp <= 0:
            return 1.0
        return min(1.0, (p - self.warmup) / self.ramp)

    def in_warmup(self, p: float) -> bool:
        return p < self.warmup

    def lr_factor(self, p: float) -> float:
        """1 until the ramp ends, then a cosine from 1 down to ``lr_floor`` at the end."""
        start = self.warmup + self.ramp
        if p <= start or start >= 1.0:
            return 1.0
        t = min(1.0, (p - start) / (1.0 - start))
        return self.lr_floor + (1.0 - self.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * t))
