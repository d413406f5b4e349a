"""Output specifications: the *unsafe* set of integer logits, as a disjunction of conjunctions of
integer linear constraints ``A_r · z >= b_r``.

Robustness of class ``c`` is the special case with one disjunct per other class ``j``:
``z_j - z_c >= 0`` for ``j < c`` and ``z_j - z_c >= 1`` for ``j > c`` (argmax ties go to the smallest
index, so a tie with a smaller index already changes the class). Everything is exact integer
arithmetic: rational constraints from VNN-LIB files are scaled to integers first, which is exact
because the logits are integers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

from qcert.attack import Goal
from qcert.errors import InputError

#: coefficients beyond this magnitude could overflow int64 in the fused bounds; refuse them
MAX_COEF = 1 << 40


@dataclass(frozen=True)
class OutputSpec:
    """The unsafe set ``∪_d ∩_{r: group[r] = d} {z : A[r] · z >= b[r]}`` over integer logits ``z``.

    ``A``: int64 R×K, ``b``: int64 R, ``group``: int64 R with values ``0..D-1`` (every disjunct has
    at least one row). A box is *safe* when for every disjunct some row's upper bound over the box is
    ``< b[r]``.
    """

    A: torch.Tensor
    b: torch.Tensor
    group: torch.Tensor
    num_disjuncts: int

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.A.dtype != torch.int64:
            raise InputError("spec matrix A must be an int64 R×K tensor")
        r = self.A.shape[0]
        if self.b.shape != (r,) or self.group.shape != (r,):
            raise InputError("spec b and group must have one entry per row of A")
        if r == 0 or self.num_disjuncts < 1:
            raise InputError("a specification needs at least one constraint")
        if set(self.group.tolist()) != set(range(self.num_disjuncts)):
            raise InputError("every disjunct of a specification needs at least one constraint")
        if int(self.A.abs().max()) > MAX_COEF or int(self.b.abs().max()) > MAX_COEF * 1024:
            raise InputError(
                "specification coefficients exceed 2**40 in magnitude; rescale the property"
            )

    @property
    def num_classes(self) -> int:
        return int(self.A.shape[1])

    @staticmethod
    def robustness(label: int, num_classes: int) -> OutputSpec:
        """Unsafe: some class ``j != label`` wins under the tie rule."""
        if not 0 <= label < num_classes or num_classes < 2:
            raise InputError(f"label {label} out of range for {num_classes} classes")
        others = [j for j in range(num_classes) if j != label]
        a = torch.zeros(len(others), num_classes, dtype=torch.int64)
        for r, j in enumerate(others):
            a[r, j], a[r, label] = 1, -1
        b = torch.tensor([1 if j > label else 0 for j in others], dtype=torch.int64)
        return OutputSpec(a, b, torch.arange(len(others)), len(others))

    @staticmethod
    def from_rational(
        disjuncts: Sequence[Sequence[tuple[Sequence[Fraction], str, Fraction]]], num_classes: int
    ) -> OutputSpec:
        """Build from rational constraints ``(coefs, op, rhs)`` meaning ``coefs · z  op  rhs`` with
        ``op`` one of ``>=, >, <=, <``. Each constraint is scaled to integer coefficients; since
        ``z`` is an integer vector, ``a·z > t`` becomes ``a·z >= floor(t) + 1`` exactly."""
        rows, rhs, group = [], [], []
        for d, conj in enumerate(disjuncts):
            if not conj:
                raise InputError("an empty conjunction in the output property (always unsafe)")
            for coefs, op, t in conj:
                if len(coefs) != num_classes:
                    raise InputError(f"constraint has {len(coefs)} coefficients, not {num_classes}")
                if op in ("<=", "<"):
                    coefs, t, op = [-c for c in coefs], -t, (">=" if op == "<=" else ">")
                elif op not in (">=", ">"):
                    raise InputError(f"unsupported comparison {op!r}")
                den = math.lcm(*(Fraction(c).denominator for c in [*coefs, t]))
                a = [int(Fraction(c) * den) for c in coefs]
                tt = Fraction(t) * den
                if op == ">=":
                    bound = -((-tt.numerator) // tt.denominator)  # ceil
                else:
                    bound = tt.numerator // tt.denominator + 1  # floor + 1
                rows.append(a)
                rhs.append(bound)
                group.append(d)
        return OutputSpec(
            torch.tensor(rows, dtype=torch.int64),
            torch.tensor(rhs, dtype=torch.int64),
            torch.tensor(group, dtype=torch.int64),
            len(disjuncts),
        )

    # ------------------------------------------------------------------ decisions
    def disjunct_slack(self, ub: torch.Tensor) -> torch.Tensor:
        """Per box and disjunct (B×D), from exact row upper bounds ``ub`` (B×R):
        ``min_{r in d} (ub_r - b_r + 1)``. Disjunct ``d`` is impossible on the box iff ``<= 0``."""
        slack = ub - self.b.unsqueeze(0) + 1  # <= 0: row r cannot hold anywhere in the box
        per = torch.full(
            (ub.shape[0], self.num_disjuncts), torch.iinfo(torch.int64).max, dtype=torch.int64
        )
        return per.scatter_reduce(
            1, self.group.unsqueeze(0).expand_as(slack), slack, reduce="amin", include_self=True
        )

    def badness(self, ub: torch.Tensor) -> torch.Tensor:
        """Per box (B): ``max_d`` of :meth:`disjunct_slack`. The box is proven safe iff ``<= 0``."""
        return self.disjunct_slack(ub).max(dim=1).values

    def holds(self, z: torch.Tensor) -> torch.Tensor:
        """Exact test on int64 logits ``z`` (N×K): True where ``z`` lies in the unsafe set."""
        if z.dtype != torch.int64:
            raise InputError("the exact specification test needs int64 logits")
        ok = (z @ self.A.t()) >= self.b.unsqueeze(0)  # N×R
        bad = torch.ones(z.shape[0], self.num_disjuncts, dtype=torch.int64)
        bad = bad.scatter_reduce(
            1,
            self.group.unsqueeze(0).expand_as(ok),
            ok.to(torch.int64),
            reduce="amin",
            include_self=True,
        )
        return bad.bool().any(dim=1)

    def goal(self, n: int) -> Goal:
        """The attack goal for ``n`` boxes: targets are disjuncts, rows their constraints (padded
        with the always-true row ``0 >= 0``)."""
        m = int(torch.bincount(self.group, minlength=self.num_disjuncts).max())
        k = self.num_classes
        c = torch.zeros(self.num_disjuncts, m, k, dtype=torch.int64)
        thr = torch.zeros(self.num_disjuncts, m, dtype=torch.int64)
        fill = [0] * self.num_disjuncts
        for r in range(self.A.shape[0]):
            d = int(self.group[r])
            c[d, fill[d]] = self.A[r]
            thr[d, fill[d]] = self.b[r]
            fill[d] += 1
        return Goal(c.unsqueeze(0).expand(n, -1, -1, -1), thr.unsqueeze(0).expand(n, -1, -1))
