"""Formats and rounding against a plain-Python rational reference."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcert.errors import FormatError
from qcert.quant import FixedPointFormat, Rounding, fake_requantize, requantize, round_shift


def ref_round(v: Fraction, rule: Rounding) -> int:
    if rule is Rounding.FLOOR:
        return math.floor(v)
    if rule is Rounding.HALF_UP:
        return math.floor(v + Fraction(1, 2))
    fl = math.floor(v)
    rem = v - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        return fl + 1
    return fl


@pytest.mark.parametrize("rule", list(Rounding))
def test_round_shift_exhaustive_small(rule: Rounding) -> None:
    acc = torch.arange(-300, 301, dtype=torch.int64)
    for shift in range(-3, 7):
        got = round_shift(acc, shift, rule).tolist()
        want = [
            ref_round(Fraction(a, 2**shift) if shift >= 0 else Fraction(a * 2**-shift), rule)
            for a in acc.tolist()
        ]
        assert got == want, (rule, shift)


def test_rounding_rules_on_ties() -> None:
    acc = torch.tensor([-5, -3, -1, 1, 3, 5], dtype=torch.int64)  # x.5 values at shift 1
    assert round_shift(acc, 1, "half_up").tolist() == [-2, -1, 0, 1, 2, 3]
    assert round_shift(acc, 1, "half_even").tolist() == [-2, -2, 0, 0, 2, 2]
    assert round_shift(acc, 1, "floor").tolist() == [-3, -2, -1, 0, 1, 2]


@settings(max_examples=300, deadline=None)
@given(
    bits=st.integers(2, 16),
    signed=st.booleans(),
    frac_out=st.integers(-6, 16),
    frac_in=st.integers(-6, 24),
    rule=st.sampled_from(list(Rounding)),
    values=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=20),
)
def test_requantize_matches_reference_and_fake(
    bits, signed, frac_out, frac_in, rule, values
) -> None:
    fmt = FixedPointFormat(bits, signed, frac_out)
    acc = torch.tensor(values, dtype=torch.int64)
    got = requantize(acc, frac_in, fmt, rule)
    for a, g in zip(values, got.tolist()):
        r = ref_round(Fraction(a) * Fraction(2) ** (frac_out - frac_in), rule)
        assert g == min(max(r, fmt.qmin), fmt.qmax)
    real = acc.to(torch.float64) * 2.0**-frac_in
    fake = fake_requantize(real, fmt, rule) * 2.0**frac_out
    assert torch.equal(fake.to(torch.int64), got)


@settings(max_examples=300, deadline=None)
@given(
    bits=st.integers(2, 16),
    signed=st.booleans(),
    shift=st.integers(0, 80),
    values=st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=20),
)
def test_left_shift_saturates_without_overflow(bits, signed, shift, values) -> None:
    fmt = FixedPointFormat(bits, signed, 32)
    acc = torch.tensor(values, dtype=torch.int64)
    got = requantize(acc, 32 - shift if shift <= 64 else -32, fmt, "half_up").tolist()
    k = shift if shift <= 64 else 64
    want = [min(max(a * 2**k, fmt.qmin), fmt.qmax) for a in values]
    assert got == want


def test_left_shift_overflow_regression() -> None:
    # 2**23 shifted left by 40 bits is 2**63: it must saturate to 127, not wrap to -128
    fmt = FixedPointFormat(8, True, 20)
    assert requantize(torch.tensor([2**23, -(2**23), 0]), -20, fmt, "half_up").tolist() == [
        127,
        -128,
        0,
    ]


def test_fake_requantize_clipped_ste_gradient() -> None:
    fmt = FixedPointFormat(4, False, 0)  # codes 0..15
    v = torch.tensor([-3.0, 0.2, 7.6, 14.9, 15.6, 40.0], requires_grad=True)
    fake_requantize(v, fmt, "half_up").sum().backward()
    assert v.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 1, "signed": True, "frac": 0},
        {"bits": 33, "signed": True, "frac": 0},
        {"bits": 8, "signed": "yes", "frac": 0},
        {"bits": 8, "signed": True, "frac": 1.5},
        {"bits": 8, "signed": True, "frac": 99},
    ],
)
def test_invalid_formats_raise(kwargs) -> None:
    with pytest.raises(FormatError):
        FixedPointFormat(**kwargs)


def test_format_ranges_and_roundtrip() -> None:
    assert (FixedPointFormat(8, True, 7).qmin, FixedPointFormat(8, True, 7).qmax) == (-128, 127)
    assert (FixedPointFormat(2, False, 0).qmin, FixedPointFormat(2, False, 0).qmax) == (0, 3)
    f = FixedPointFormat(16, True, -3)
    assert FixedPointFormat.from_dict(f.to_dict()) == f
    with pytest.raises(FormatError):
        FixedPointFormat.from_dict({"bits": 8, "signed": True})
    with pytest.raises(FormatError):
        Rounding.parse("stochastic")
