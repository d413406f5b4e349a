"""The fake-quant simulator agrees bit for bit with the int64 reference executor.

Random networks (conv / avgpool / linear, 2- to 16-bit, signed and unsigned formats, all rounding
rules, optional requantized logits) and random inputs including the extremes of the input range.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from qnets import NetSpace, rand_codes, random_networks

from qcert.quant import argmax_first


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_networks(NetSpace()), batch=st.integers(1, 4))
def test_fake_quant_matches_reference_bit_for_bit(spec, batch) -> None:
    _, in_shape, in_fmt, seed, extreme = spec
    net = spec.network(skip_overflow=True)
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
