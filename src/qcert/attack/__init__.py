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

from qcert.attack.base import Attack, AttackResult, Goal
from qcert.attack.pgd import PGD, float_pgd_accuracy, pgd_attack, pgd_float
from qcert.attack.robustness import robust_accuracy

# the input validators and the fake-quant forward live in qcert.quant (verify, train and
# layerwise use them too); re-exported here where users found them first
from qcert.quant.fake_forward import FakeForward
from qcert.quant.inputs import check_box, check_eps, check_labels

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
