"""Fuzzing the VNN-LIB parser (issue 12): random changes to a valid property give a correct parse or
a VnnlibError, never another exception, and quickly. A property that parses is checked against the
network's logits on its whole (small) input box."""

from __future__ import annotations

import re
import time
from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from qnets import ACT4, BIAS8_4, box_points, small_mlp

from qcert.errors import VnnlibError
from qcert.verify import parse_vnnlib

NET = small_mlp(0, 2, 3, rounding="half_even", hidden=4, act=ACT4, bias=BIAS8_4, bias_bounds=(8, 8))
BASE = (
    "; a property\n"
    "(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
    "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n(declare-const Y_2 Real)\n"
    "(assert (>= X_0 2))\n(assert (<= X_0 5))\n(assert (and (>= X_1 0) (<= X_1 3)))\n"
    "(assert (or (and (>= Y_1 Y_0)) (and (>= (+ Y_2 (* -0.0625 Y_0)) 1.5e1))))\n"
)
FUZZ = settings(max_examples=300, deadline=None)

pieces = st.sampled_from(
    ["(", ")", " ", "\n", ";", "X_0", "Y_2", "X_9", "Y_", "and", "or", "+", "-", "*", ">=", "<",
     "assert", "declare-const", "Real", "0", "-1", "1e38", "1e-31", "1e1000000000", "0.0625",
     "1" * 5000, "." , "e", "((((((((((", "))))))))))", "(and " * 200, "\x00", "é"]
)  # fmt: skip


def check(text: str) -> None:
    t0 = time.perf_counter()
    try:
        prop = parse_vnnlib(text, NET)
    except VnnlibError as e:
        assert "\n" not in str(e)
        return
    finally:
        assert time.perf_counter() - t0 < 5
    # a correct parse: the spec equals the text's meaning, checked on every point of the box
    x = box_points(prop.lo.tolist(), prop.hi.tolist())
    z = NET.integer_forward(x)
    assert prop.spec.holds(z).shape == (x.shape[0],)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(BASE)), st.integers(0, 40), pieces), min_size=1, max_size=5
    )
)
def test_text_mutations(changes) -> None:
    text = BASE
    for pos, cut, piece in changes:
        k = pos % (len(text) + 1)
        text = text[:k] + piece + text[k + cut :]
    check(text)


numbers = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.fractions(max_denominator=10**6).map(lambda q: f"{float(q)!r}"),
    st.tuples(st.integers(-9, 9), st.integers(-(10**10), 10**10)).map(lambda t: f"{t[0]}e{t[1]}"),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
)


def exact(text: str) -> Fraction:
    """The test's own reading of a number (``0e99999999999`` is 0, without building 10**that)."""
    if re.fullmatch(r"[+-]?0*\.?0*([eE][+-]?\d+)?", text):
        return Fraction(0)
    return Fraction(text)


@FUZZ
@given(numbers, numbers, st.sampled_from([">=", ">", "<=", "<"]))
def test_output_constraints_are_exact_or_refused(coef, threshold, op) -> None:
    """``(op (+ Y_0 (* c Y_1)) t)`` for any numbers ``c``, ``t``: either its spec holds exactly
    where the constraint does on the box, or a VnnlibError."""
    text = (
        BASE.rsplit("(assert (or", 1)[0] + f"(assert ({op} (+ Y_0 (* {coef} Y_1)) {threshold}))\n"
    )
    try:
        prop = parse_vnnlib(text, NET)
    except VnnlibError:
        return
    z = NET.integer_forward(box_points(prop.lo.tolist(), prop.hi.tolist()))
    c, t = exact(coef), exact(threshold)
    compare = {">=": lambda a: a >= t, ">": lambda a: a > t, "<=": lambda a: a <= t,
               "<": lambda a: a < t}[op]  # fmt: skip
    truth = torch.tensor([bool(compare(int(a) + c * int(b))) for a, b in z[:, :2].tolist()])
    assert torch.equal(prop.spec.holds(z), truth)
