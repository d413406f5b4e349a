"""The base of qcert's attacks: integer boxes, attack goals, results, and the exact re-check.

An attack searches an integer L∞ box ``[lo, hi]`` (int64, B×input_shape) for an input that reaches a
*goal* on the network's integer logits. The default goal is misclassification under the tie rule
(argmax ties go to the smallest index). Attacks may use any float heuristic to search, but every
success they report is re-checked with the reference executor :meth:`QNetwork.integer_forward`:
``AttackResult.success[i]`` is True only if ``adv[i]`` lies in box ``i`` and reaches the goal exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcert.errors import InputError
from qcert.quant.inputs import check_box, check_labels
from qcert.quant.network import QNetwork

__all__ = ["Attack", "AttackResult", "Goal"]


@dataclass(frozen=True)
class Goal:
    """What an attack tries to reach, as linear constraints on the integer logits ``z``.

    Box ``b`` reaches the goal when for some target ``t`` every row ``m`` holds:
    ``C[b, t, m] · z >= thr[b, t, m]`` (a disjunction over targets of conjunctions over rows, in
    exact integer arithmetic). ``C`` is int64 B×T×M×K, ``thr`` int64 B×T×M.
    """

    C: torch.Tensor
    thr: torch.Tensor

    @staticmethod
    def misclassification(labels: torch.Tensor, num_classes: int) -> Goal:
        """Class ``argmax_first(z) != y``: one target per wrong class ``j``, ``z_j - z_y >= t``
        with ``t = 0`` for ``j < y`` (a tie goes to ``j``) and ``t = 1`` for ``j > y``."""
        labels = labels.reshape(-1).to(torch.int64)
        b, k = labels.numel(), num_classes
        if k < 2:
            raise InputError("a misclassification goal needs at least two classes")
        j = torch.arange(k)
        # targets: the K-1 classes other than y, in increasing order
        others = j.unsqueeze(0).expand(b, k)[j.unsqueeze(0) != labels.unsqueeze(1)].view(b, k - 1)
        eye = torch.eye(k, dtype=torch.int64)
        c = eye[others] - eye[labels].unsqueeze(1)  # B×(K-1)×K
        thr = (others > labels.unsqueeze(1)).to(torch.int64)
        return Goal(c.unsqueeze(2), thr.unsqueeze(2))

    @property
    def num_targets(self) -> int:
        return int(self.C.shape[1])

    def select(self, idx: torch.Tensor) -> Goal:
        """The goal of the boxes ``idx``."""
        return Goal(self.C[idx], self.thr[idx])

    def reached(self, z: torch.Tensor, box: torch.Tensor | None = None) -> torch.Tensor:
        """Exact test on int64 logits ``z`` (N×K) of boxes ``box`` (default ``0..N-1``): bool N."""
        if z.dtype != torch.int64:
            raise InputError(f"the exact goal test needs int64 logits, got {z.dtype}")
        c, thr = (self.C, self.thr) if box is None else (self.C[box], self.thr[box])
        v = (c * z[:, None, None, :]).sum(-1)  # N×T×M, exact int64
        return (v >= thr).all(-1).any(-1)

    def objective(self, z: torch.Tensor, box: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Float objective of (box, target) pairs on float logits ``z`` (P×K, integer units):
        ``min_m (C z - thr)``; the target is reached when it is ``>= 0`` (up to float error)."""
        c = self.C[box, target].to(z.dtype)  # P×M×K
        thr = self.thr[box, target].to(z.dtype)
        return ((c * z[:, None, :]).sum(-1) - thr).min(-1).values


@dataclass
class AttackResult:
    """Outcome of an attack on B boxes.

    Attributes:
        adv: int64 B×input_shape, inside each box: the counterexample where ``success``, else the
            best point found (largest goal objective).
        success: bool B, True only if the reference executor confirms ``adv`` reaches the goal
            (for the misclassification goal: ``net.predict(adv) != label``).
        predicted: int64 B, the reference executor's class of ``adv``.
    """

    adv: torch.Tensor
    success: torch.Tensor
    predicted: torch.Tensor

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else 0.0


class Attack:
    """Base class: ``attack(lo, hi, labels)`` → :class:`AttackResult` on the integer boxes.

    Subclasses implement :meth:`search`, which returns candidate points; the base class re-checks
    them with the reference executor, so a subclass cannot report a false success.
    """

    name = "attack"

    def __init__(self, net: QNetwork) -> None:
        if not isinstance(net, QNetwork):
            raise InputError(f"expected a QNetwork, got {type(net).__name__}")
        self.net = net

    def __call__(
        self,
        lo: torch.Tensor,
        hi: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        goal: Goal | None = None,
        x0: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack the boxes ``[lo, hi]``: misclassify ``labels``, or reach ``goal`` if given."""
        lo, hi = check_box(self.net, lo, hi)
        n = lo.shape[0]
        misclass = goal is None
        if goal is None:
            if labels is None:
                raise InputError("an attack needs labels or a goal")
            labels = check_labels(self.net, labels, n)
            goal = Goal.misclassification(labels, self.net.num_classes)
        elif goal.C.shape[0] != n or goal.C.shape[-1] != self.net.num_classes:
            raise InputError("the goal does not match the boxes or the number of classes")
        if x0 is not None:
            x0 = self.net.check_input(x0)
            if x0.shape != lo.shape:
                raise InputError(f"x0 has shape {tuple(x0.shape)}, the boxes {tuple(lo.shape)}")
            x0 = torch.minimum(torch.maximum(x0, lo), hi)
        adv = self.search(lo, hi, goal, x0)
        # the exact re-check: inside the box, and the goal reached by the reference executor
        adv = torch.minimum(torch.maximum(adv.to(torch.int64), lo), hi)
        z = self.net.integer_forward(adv)
        predicted = self.net.predict(adv)
        if misclass:
            assert labels is not None
            success = predicted != labels
        else:
            success = goal.reached(z)
        return AttackResult(adv, success, predicted)

    def search(
        self, lo: torch.Tensor, hi: torch.Tensor, goal: Goal, x0: torch.Tensor | None
    ) -> torch.Tensor:
        """Candidate points (int64 B×input_shape, inside the boxes); subclasses implement this."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers
    def cheap_points(
        self, lo: torch.Tensor, hi: torch.Tensor, x0: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """The points every attack tries first: ``x0`` (if given), the box centre and two corners."""
        pts = [] if x0 is None else [x0]
        pts += [torch.div(lo + hi, 2, rounding_mode="floor"), lo, hi]
        return pts

    def check_points(
        self, pts: torch.Tensor, goal: Goal, box: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact check of integer points ``pts`` (N×input_shape) against the goals of ``box``:
        returns (reached bool N, best objective int64 N)."""
        z = self.net.integer_forward(pts)
        c, thr = goal.C[box], goal.thr[box]
        v = (c * z[:, None, None, :]).sum(-1) - thr  # N×T×M
        score = v.min(-1).values.max(-1).values
        return score >= 0, score

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.net.__class__.__name__})"
