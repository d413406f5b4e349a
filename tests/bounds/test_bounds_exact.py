"""Exact QA-IBP bounds against brute-force enumeration of every integer input in small boxes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from qnets import box_points, small_mlp

from qcert.bounds import certify_boxes, eps_box, margin_lower_bounds, required_margin
from qcert.errors import InputError
from qcert.quant import FixedPointFormat, QLinear, QNetwork, argmax_first


def small_net(seed: int, d: int, k: int, logit_requant: bool, rounding: str) -> QNetwork:
    return small_mlp(seed, d, k, logit_requant, rounding)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    d=st.integers(1, 3),
    k=st.integers(2, 4),
    logit_requant=st.booleans(),
    rounding=st.sampled_from(["half_up", "half_even", "floor"]),
    eps=st.integers(0, 3),
)
def test_bounds_contain_every_integer_input(seed, d, k, logit_requant, rounding, eps) -> None:
    net = small_net(seed, d, k, logit_requant, rounding)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, 16, (1, d), generator=g)
    lo, hi = eps_box(net, x, eps)
    pts = box_points(lo[0], hi[0])
    bounds = net.int_bounds(lo, hi)
    q = pts
    for layer, (l, u) in zip(net.layers, bounds):
        q = layer.integer(q)
        assert bool((q >= l).all() and (q <= u).all())
    z = net.integer_forward(pts)
    for y in range(k):
        lb = margin_lower_bounds(net, lo, hi, torch.tensor([y]))
        assert bool((z[:, y : y + 1] - z >= lb).all())
        if bool(certify_boxes(net, lo, hi, torch.tensor([y]))[0]):
            assert bool((argmax_first(z) == y).all()), "certified a box with a counterexample"


def test_singleton_box_is_exact() -> None:
    net = small_net(3, 3, 4, False, "half_up")
    x = torch.randint(0, 16, (50, 3), generator=torch.Generator().manual_seed(0))
    (l, u) = net.int_bounds(x, x)[-1]
    assert torch.equal(l, u) and torch.equal(l, net.integer_forward(x))
    y = net.predict(x)
    lb = margin_lower_bounds(net, x, x, y)
    z = net.integer_forward(x)
    assert torch.equal(lb, z.gather(1, y[:, None]) - z)
    assert bool(certify_boxes(net, x, x, y).all())


def test_ties_follow_the_smallest_index_rule() -> None:
    # logits are exactly equal: class 0 wins the tie, class 1 does not
    w = FixedPointFormat(4, True, 0)
    net = QNetwork(
        [QLinear.from_int(torch.tensor([[1], [1]]), None, w, None)],
        (1,),
        FixedPointFormat(4, False, 0),
    )
    x = torch.tensor([[3]])
    assert net.predict(x).tolist() == [0]
    assert certify_boxes(net, x, x, torch.tensor([0])).tolist() == [True]
    assert certify_boxes(net, x, x, torch.tensor([1])).tolist() == [False]
    assert required_margin(torch.tensor([1]), 3).tolist() == [[1, 0, 0]]


def test_eps_box_validation_and_clipping() -> None:
    net = small_net(0, 2, 2, False, "half_up")
    lo, hi = eps_box(net, torch.tensor([[0, 15]]), 2)
    assert lo.tolist() == [[0, 13]] and hi.tolist() == [[2, 15]]
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError):
            eps_box(net, torch.tensor([[0, 1]]), bad)
