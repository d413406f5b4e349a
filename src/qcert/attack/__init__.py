"""Attacks on the integer network: every reported counterexample is re-checked by the reference
executor ``net.integer_forward`` / ``net.predict`` (ties to the smallest index). Beside them, the
float PGD of PGD training (:func:`pgd_float`), an attack on a float model only.

>>> from qcert.attack import pgd_attack, robust_accuracy
>>> from qcert.bounds import eps_box
>>> lo, hi = eps_box(net, x, eps=4)
>>> res = pgd_attack(net, lo, hi, labels, steps=20, restarts=1)
>>> out = robust_accuracy(net, x, labels, eps=4)

See ``docs/attack.md``.
"""

from __future__ import annotations

from qcert.attack.base import (
    Attack,
    AttackResult,
    FakeForward,
    Goal,
    check_box,
    check_eps,
    check_labels,
)
from qcert.attack.evaluate import robust_accuracy
from qcert.attack.pgd import PGD, float_pgd_accuracy, pgd_attack, pgd_float

__all__ = [
    "PGD",
    "Attack",
    "AttackResult",
    "FakeForward",
    "Goal",
    "check_box",
    "check_eps",
    "check_labels",
    "float_pgd_accuracy",
    "pgd_attack",
    "pgd_float",
    "robust_accuracy",
]
