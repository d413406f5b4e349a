"""VNN-LIB: parsing the VNN-COMP subset, sat/unsat against enumeration, clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from qnets import ACT4, BIAS8_4, box_points, small_mlp

from qcert.errors import InputError
from qcert.quant import QNetwork
from qcert.verify import VnnlibError, parse_vnnlib, verify_vnnlib


def small_net(seed: int) -> QNetwork:
    return small_mlp(
        seed, 3, 3, rounding="half_even", hidden=6, act=ACT4, bias=BIAS8_4, bias_bounds=(8, 8)
    )


def header(n_in: int = 3, k: int = 3) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(k)]
    return "\n".join(lines) + "\n"


def box_text(lo: list[int], hi: list[int]) -> str:
    return "".join(
        f"(assert (>= X_{i} {a}))\n(assert (<= X_{i} {b}))\n"
        for i, (a, b) in enumerate(zip(lo, hi))
    )


def robustness_text(lo: list[int], hi: list[int], c: int, k: int = 3) -> str:
    """The VNN-COMP robustness property: unsafe if some other logit is >= Y_c."""
    ors = " ".join(f"(and (>= Y_{j} Y_{c}))" for j in range(k) if j != c)
    return "; a comment\n" + header() + box_text(lo, hi) + f"(assert (or {ors}))\n"


def enum_logits(net: QNetwork, lo: list[int], hi: list[int]) -> torch.Tensor:
    return net.integer_forward(box_points(lo, hi))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("method", ["bab", "milp", "bab+milp"])
def test_robustness_property_against_enumeration(seed: int, method: str) -> None:
    net = small_net(seed)
    rng = random.Random(seed)
    for _ in range(3):
        x = [rng.randint(0, 15) for _ in range(3)]
        r = rng.choice([1, 2, 3])
        lo, hi = [max(0, v - r) for v in x], [min(15, v + r) for v in x]
        c = int(net.predict(torch.tensor([x]))[0])
        z = enum_logits(net, lo, hi)
        truth = bool((torch.cat([z[:, :c], z[:, c + 1 :]], 1) >= z[:, c : c + 1]).any())
        res = verify_vnnlib(net, robustness_text(lo, hi, c), method=method, timeout=30)
        assert res.result == ("sat" if truth else "unsat"), (seed, lo, hi, c)
        if truth:
            assert res.inputs is not None and res.outputs is not None
            xs = torch.tensor([res.inputs])
            assert all(a <= v <= b for v, a, b in zip(res.inputs, lo, hi))
            zz = net.integer_forward(xs)[0]
            assert zz.tolist() == res.outputs
            assert any(int(zz[j]) >= int(zz[c]) for j in range(3) if j != c)
            text = res.vnncomp()
            assert text.startswith("sat\n((X_0 ") and f"(Y_2 {res.outputs[2]}))" in text


def test_linear_terms_decimals_and_strict_comparisons() -> None:
    net = small_net(3)
    lo, hi = [2, 0, 5], [9, 15, 12]
    z = enum_logits(net, lo, hi)
    prop = (
        header()
        + "(assert (and (>= X_0 2) (<= X_0 9.0)))\n"
        + "(assert (<= X_1 15)) (assert (>= X_1 0))\n"
        + "(assert (> X_2 4)) (assert (< X_2 13))\n"
    )
    for t in (-3.5, 53, 86.5, 87, 100):  # 53 and 86.5 are the exact maxima: strictness matters
        for ops in ((">=", "<"), (">", "<=")):
            out = (
                f"(assert (or (and ({ops[0]} (+ Y_0 (* -0.5 Y_1)) {t}) ({ops[1]} Y_2 (- Y_0 1e1)))"
                f" (and ({ops[0]} (- Y_2) {t}))))\n"
            )
            p = parse_vnnlib(prop + out, net)
            assert p.lo.tolist() == lo and p.hi.tolist() == hi
            v1 = z[:, 0].double() - 0.5 * z[:, 1].double()
            v2 = z[:, 2].double()
            v3 = z[:, 0].double() - 10
            if ops[0] == ">=":
                d1 = (v1 >= t) & (v2 < v3)
                d2 = -z[:, 2].double() >= t
            else:
                d1 = (v1 > t) & (v2 <= v3)
                d2 = -z[:, 2].double() > t
            truth = bool((d1 | d2).any())
            assert torch.equal(p.spec.holds(z), d1 | d2)
            for method in ("bab", "milp"):
                res = verify_vnnlib(net, prop + out, method=method, timeout=30)
                assert res.result == ("sat" if truth else "unsat"), (t, ops, method)


def test_defaults_and_clipping_to_input_range(tmp_path: Path) -> None:
    net = small_net(1)
    # X_1 has no bound (whole range), X_2's upper bound is clipped to 15
    text = header() + "(assert (>= X_0 3)) (assert (<= X_0 3)) (assert (<= X_2 99))\n"
    text += "(assert (>= Y_0 -1000000))\n"
    p = parse_vnnlib(text, net)
    assert p.lo.tolist() == [3, 0, 0] and p.hi.tolist() == [3, 15, 15]
    f = tmp_path / "p.vnnlib"
    f.write_text(text)
    assert verify_vnnlib(net, f, timeout=10).result == "sat"
    assert verify_vnnlib(net, str(f), timeout=10, method="milp").result == "sat"


# malformed files, by what is wrong with them
SYNTAX = {
    "unbalanced": header() + "(assert (>= Y_0 Y_1)",
    "extra paren": header() + "(assert (>= Y_0 Y_1)))",
    "atom": "declare-const",
    "command": header() + "(check-sat)",
    "number": header() + "(assert (>= Y_0 abc))",
}
DECLARATIONS = {
    "undeclared": header() + "(assert (>= Y_0 Y_7))",
    "bad name": header() + "(declare-const Z_0 Real) (assert (>= Y_0 Y_1))",
    "too few inputs": header(2) + "(assert (>= Y_0 Y_1))",
    "too many outputs": header(3, 4) + "(assert (>= Y_0 Y_1))",
}
INPUT_CONSTRAINTS = {
    "off grid": header() + "(assert (>= X_0 0.5)) (assert (>= Y_0 Y_1))",
    "input combination": header() + "(assert (>= (+ X_0 X_1) 2)) (assert (>= Y_0 Y_1))",
    "input disjunction": header() + "(assert (or (>= X_0 2) (<= X_0 1))) (assert (>= Y_0 Y_1))",
    "empty box": header() + "(assert (>= X_0 9)) (assert (<= X_0 3)) (assert (>= Y_0 Y_1))",
}
OUTPUT_CONSTRAINTS = {
    "mixed": header() + "(assert (>= Y_0 X_1))",
    "nonlinear": header() + "(assert (>= (* Y_0 Y_1) 0))",
    "operator": header() + "(assert (= Y_0 Y_1))",
    "no output": header() + "(assert (>= X_0 1))",
}
BAD = {**SYNTAX, **DECLARATIONS, **INPUT_CONSTRAINTS, **OUTPUT_CONSTRAINTS}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_files_raise_clear_errors(name: str) -> None:
    with pytest.raises(VnnlibError):
        parse_vnnlib(BAD[name], small_net(0))


def test_missing_file_and_errors_are_qcert_errors(tmp_path: Path) -> None:
    net = small_net(0)
    with pytest.raises(InputError, match="no VNN-LIB file"):
        verify_vnnlib(net, tmp_path / "missing.vnnlib")
    assert issubclass(VnnlibError, InputError)


# issue 12 item 7: hostile files are VnnlibErrors naming the limit, quickly, never another error
HOSTILE = {
    "deep nesting": (
        header() + "(assert " + "(and " * 100_000 + "(>= Y_0 Y_1)" + ")" * 100_000 + ")",
        "deeper than 100",
    ),
    "huge exponent": (
        header() + "(assert (<= X_2 1e1000000000)) (assert (>= Y_0 Y_1))",
        "10\\*\\*±1000",
    ),
    "tiny exponent": (header() + "(assert (>= Y_0 1e-1000000000))", "10\\*\\*±1000"),
    "many digits": (header() + "(assert (>= Y_0 " + "7" * 100_000 + "))", "1000 digits"),
    "long exponent": (header() + "(assert (>= Y_0 1e" + "9" * 100_000 + "))", "10\\*\\*±1000"),
    "zeros before a digit": (header() + "(assert (>= Y_0 0." + "0" * 5000 + "1))", "10\\*\\*±1000"),
    "long variable index": (
        header() + "(declare-const X_" + "1" * 5000 + " Real) (assert (>= Y_0 Y_1))",
        "named X_i",
    ),
    "tiny coefficient": (header() + "(assert (>= (* 1e-31 Y_1) Y_0))", "limit is 2\\*\\*40"),
    "growing constant": (
        header() + "(assert (>= Y_0 " + "(* 1e999 " * 30 + "1" + ")" * 30 + "))",
        "20000 bits",
    ),
    "disjunct product": (
        header() + "(assert (and" + " (or (>= Y_0 1) (>= Y_0 2) (>= Y_0 3))" * 12 + "))",
        "10000 disjuncts",
    ),
    "big off-grid bound": (
        header() + "(assert (<= (* 3 X_0) 1e400)) (assert (>= Y_0 Y_1))",
        "grid",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_name_the_limit(name: str) -> None:
    import time

    text, match = HOSTILE[name]
    t0 = time.perf_counter()
    with pytest.raises(VnnlibError, match=match):
        parse_vnnlib(text, small_net(0))
    assert time.perf_counter() - t0 < 2


def test_large_thresholds_are_exact() -> None:
    """Issue 12 item 7: thresholds far beyond the logits' reach (1e38; coefficients 1 and
    −0.0625 with a threshold of 1e15) are decided exactly, as are ones inside it."""
    net = small_net(2)
    lo, hi = [0, 0, 0], [15, 15, 15]
    z = enum_logits(net, lo, hi)
    base = header() + box_text(lo, hi)
    cases = [
        ("(>= Y_1 1e38)", z[:, 1].double() >= 1e38),
        ("(<= Y_1 -1e38)", z[:, 1].double() <= -1e38),
        ("(>= Y_1 -1e38)", z[:, 1].double() >= -1e38),
        ("(>= (+ Y_0 (* -0.0625 Y_1)) 1e15)", z[:, 0] - z[:, 1] / 16 >= 1e15),
        ("(<= (+ Y_0 (* -0.0625 Y_1)) 1e15)", z[:, 0] - z[:, 1] / 16 <= 1e15),
        ("(> (* 1e-31 Y_1) 0)", z[:, 1] > 0),
        ("(or (>= Y_0 Y_0) (>= Y_2 1e300))", torch.ones(z.shape[0], dtype=torch.bool)),
    ]
    for out, truth in cases:
        for cmp in range(2):
            t = int(z[:, 0].max()) - cmp  # a threshold inside the reach, next to its edge
            text = base + f"(assert (and {out} (>= Y_0 {t})))\n"
            want = truth & (z[:, 0] >= t)
            p = parse_vnnlib(text, net)
            assert torch.equal(p.spec.holds(z), want), (out, t)
            res = verify_vnnlib(net, text, timeout=30)
            assert res.result == ("sat" if bool(want.any()) else "unsat"), (out, t)
