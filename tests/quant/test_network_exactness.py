"""The fake-quant simulator agrees bit for bit with the int64 reference executor.

Random networks (conv / avgpool / linear, 2- to 16-bit, signed and unsigned formats, all rounding
rules, optional requantized logits) and random inputs including the extremes of the input range.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qcert.errors import FormatError
from qcert.quant import (
    FixedPointFormat,
    QAvgPool2d,
    QConv2d,
    QFlatten,
    QLinear,
    QNetwork,
    QRequant,
    Rounding,
    argmax_first,
)


def rand_codes(g: torch.Generator, shape, fmt: FixedPointFormat, extreme: float) -> torch.Tensor:
    q = torch.randint(fmt.qmin, fmt.qmax + 1, shape, generator=g)
    u = torch.rand(shape, generator=g)
    q = torch.where(u < extreme / 2, torch.full_like(q, fmt.qmin), q)
    return torch.where(u > 1 - extreme / 2, torch.full_like(q, fmt.qmax), q)


@st.composite
def networks(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    extreme = draw(st.sampled_from([0.0, 0.2, 0.6]))
    rules = st.sampled_from(list(Rounding))
    in_fmt = FixedPointFormat(
        draw(st.integers(2, 16)), draw(st.booleans()), draw(st.integers(-4, 16))
    )

    def wfmt():
        return FixedPointFormat(
            draw(st.integers(2, 16)), draw(st.booleans()), draw(st.integers(-4, 16))
        )

    def bias_for(acc_frac: int, n: int):
        if not draw(st.booleans()):
            return None, None
        bits = draw(st.integers(2, 32))
        lo_frac, hi_frac = max(-32, acc_frac - (62 - bits)), min(32, acc_frac)
        if lo_frac > hi_frac:
            return None, None
        frac = draw(st.integers(lo_frac, hi_frac))
        bf = FixedPointFormat(bits, True, frac)
        return rand_codes(g, (n,), bf, extreme), bf

    def requant(in_frac: int):
        f = FixedPointFormat(
            draw(st.integers(2, 16)),
            draw(st.booleans()),
            # small shifts make exact ties (x.5) common; large ones exercise saturation
            max(
                -32,
                min(
                    32,
                    in_frac
                    - draw(
                        st.one_of(st.integers(-2, 3), st.integers(-3, 20), st.integers(-45, -4))
                    ),
                ),
            ),
        )
        return QRequant(f, draw(rules))

    layers = []
    frac = in_fmt.frac
    image = draw(st.booleans())
    if image:
        c, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
        shape = input_shape = (c, h, w)
        for _ in range(draw(st.integers(0, 2))):
            pad = draw(st.integers(0, 1))
            k = draw(st.integers(1, min(h, w) + 2 * pad))
            s = draw(st.integers(1, 2))
            oc = draw(st.integers(1, 3))
            wf = wfmt()
            b, bf = bias_for(frac + wf.frac, oc)
            conv = QConv2d.from_int(rand_codes(g, (oc, c, k, k), wf, extreme), b, wf, bf, s, pad)
            layers.append(conv)
            shape, frac = conv.bind(shape, frac)
            if draw(st.booleans()) and min(shape[1:]) >= 2:
                pool = QAvgPool2d(draw(st.sampled_from([(1, 2), (2, 1), (2, 2)])))
                layers.append(pool)
                shape, frac = pool.bind(shape, frac)
            rq = requant(frac)
            layers.append(rq)
            shape, frac = rq.bind(shape, frac)
            c, h, w = shape
        layers.append(QFlatten())
        d = c * h * w
    else:
        d = draw(st.integers(1, 6))
        input_shape = (d,)
    n_linear = draw(st.integers(1, 3))
    for i in range(n_linear):
        out = draw(st.integers(1, 5)) if i < n_linear - 1 else draw(st.integers(2, 5))
        wf = wfmt()
        b, bf = bias_for(frac + wf.frac, out)
        lin = QLinear.from_int(rand_codes(g, (out, d), wf, extreme), b, wf, bf)
        layers.append(lin)
        frac = frac + wf.frac
        if i < n_linear - 1 or draw(st.booleans()):  # requantized logits sometimes
            rq = requant(frac)
            layers.append(rq)
            frac = rq.format.frac
        d = out
    return layers, input_shape, in_fmt, seed, extreme


def build(layers, in_shape, in_fmt) -> QNetwork:
    """The network, or skip the example when the constructor rightly rejects it (a static bound
    shows int64 could overflow: the random formats can ask for that)."""
    try:
        return QNetwork(layers, in_shape, in_fmt)
    except FormatError as e:
        assume("overflow int64" not in str(e))
        raise


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=networks(), batch=st.integers(1, 4))
def test_fake_quant_matches_reference_bit_for_bit(spec, batch) -> None:
    layers, in_shape, in_fmt, seed, extreme = spec
    net = build(layers, in_shape, in_fmt)
    assume(net.exact_in(torch.float64))
    g = torch.Generator().manual_seed(seed + 7)
    x = rand_codes(g, (batch, *in_shape), in_fmt, max(extreme, 0.2))
    if batch > 1:  # the corners of the input range
        x[0], x[-1] = in_fmt.qmax, in_fmt.qmin
    ref = net.integer_forward(x, arith_path="int64")
    assert ref.dtype == torch.int64
    assert torch.equal(
        net.integer_forward(x), ref
    )  # the float64-where-proven-exact arithmetic path
    fake = net(x.to(torch.float64)) * 2.0**net.logit_frac
    assert torch.equal(fake, fake.round())
    assert torch.equal(fake.to(torch.int64), ref)
    assert torch.equal(argmax_first(fake), net.predict(x))
