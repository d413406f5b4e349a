"""Training-mode QA-IBP and float IBP against the exact int64 bounds and brute force."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from qnets import box_points, small_mlp, small_nets
from torch import nn

from qcert.bounds import eps_box, margin_lower_bounds
from qcert.bounds.ibp import (
    float_ibp_bounds,
    float_ibp_certified,
    qaibp_bounds,
    qaibp_interval_bounds,
)
from qcert.errors import InputError
from qcert.quant import FixedPointFormat, QNetwork
from qcert.train.archs import build_qnetwork


def mlp_net(seed: int, d: int, k: int, logit_requant: bool, rounding: str) -> QNetwork:
    return small_mlp(seed, d, k, logit_requant, rounding, logit_bits=4)


def _scale(net: QNetwork, i: int) -> float:
    return 2.0 ** -net.layers[i].out_frac


NETS = small_nets(logit_bits=4)


@settings(max_examples=120, deadline=None)
@given(net=NETS, eps=st.integers(0, 3), xseed=st.integers(0, 10**6))
def test_float64_training_bounds_equal_exact_and_contain_every_input(net, eps, xseed) -> None:
    assert net.exact_in(torch.float64)
    g = torch.Generator().manual_seed(xseed)
    x = torch.randint(0, 16, (1, *net.input_shape), generator=g)
    lo, hi = eps_box(net, x, eps)
    exact = net.int_bounds(lo, hi)
    train = qaibp_interval_bounds(net, lo, hi, dtype=torch.float64)
    pts = box_points(lo[0], hi[0])
    q = pts
    for i, (layer, (el, eu), (tl, tu)) in enumerate(zip(net.layers, exact, train)):
        s = _scale(net, i)
        assert torch.equal(tl, el.to(torch.float64) * s), f"layer {i} lower bound"
        assert torch.equal(tu, eu.to(torch.float64) * s), f"layer {i} upper bound"
        q = layer.integer(q)
        v = q.to(torch.float64) * s
        assert bool((v >= tl).all() and (v <= tu).all()), f"layer {i} misses an input"
    z = net.integer_forward(pts)
    for y in range(net.num_classes):
        yy = torch.tensor([y])
        lb = qaibp_bounds(net, lo.double(), hi.double(), yy, dtype=torch.float64).margin_lb
        exact_lb = margin_lower_bounds(net, lo, hi, yy).to(torch.float64) * 2.0**-net.logit_frac
        assert torch.equal(lb, exact_lb)
        real_margin = (z[:, y : y + 1] - z).to(torch.float64) * 2.0**-net.logit_frac
        assert bool((real_margin >= lb).all())


@settings(max_examples=60, deadline=None)
@given(net=NETS, xseed=st.integers(0, 10**6), sixteenths=st.integers(1, 40))
def test_real_valued_training_box_contains_every_integer_input(net, xseed, sixteenths) -> None:
    """A training box x ± ε with fractional ε (the ramp) contains every integer input in it.

    ε is dyadic (k/16) so that float64 computes the bounds exactly: the containment is a claim
    about exact arithmetic (float rounding could move a bound onto a rounding tie's other side).
    """
    frac_eps = sixteenths / 16
    g = torch.Generator().manual_seed(xseed)
    x = torch.randint(0, 16, (1, *net.input_shape), generator=g)
    lo_r, hi_r = x.double() - frac_eps, x.double() + frac_eps
    lo_i = torch.ceil(lo_r).clamp(*net.input_range).to(torch.int64)
    hi_i = torch.floor(hi_r).clamp(*net.input_range).to(torch.int64)
    pts = box_points(lo_i[0], hi_i[0])
    z = net.integer_forward(pts).to(torch.float64) * 2.0**-net.logit_frac
    for y in range(net.num_classes):
        lb = qaibp_bounds(net, lo_r, hi_r, torch.tensor([y]), dtype=torch.float64).margin_lb
        assert bool((z[:, y : y + 1] - z >= lb).all())


def test_singleton_box_gives_the_exact_output() -> None:
    net = mlp_net(5, 3, 4, False, "half_up")
    x = torch.randint(0, 16, (40, 3), generator=torch.Generator().manual_seed(1))
    (l, u) = qaibp_interval_bounds(net, x, x, dtype=torch.float64)[-1]
    z = net.integer_forward(x).to(torch.float64) * 2.0**-net.logit_frac
    assert torch.equal(l, u) and torch.equal(l, z)
    y = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(2))
    lb = qaibp_bounds(net, x, x, y, dtype=torch.float64).margin_lb
    assert torch.equal(lb, z.gather(1, y[:, None]) - z)


def test_trained_architecture_matches_exact_on_mnist_sized_boxes() -> None:
    net = build_qnetwork("cnn-small", (1, 28, 28), 10, seed=3)
    assert net.exact_in(torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 1, 28, 28), generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    lo, hi = eps_box(net, x, 2)
    lb = qaibp_bounds(net, lo, hi, y, dtype=torch.float64).margin_lb
    exact = margin_lower_bounds(net, lo, hi, y).to(torch.float64) * 2.0**-net.logit_frac
    assert torch.equal(lb, exact)
    # float32 (the training dtype) stays close to the exact bounds
    lb32 = qaibp_bounds(net, lo, hi, y).margin_lb.double()
    assert torch.allclose(lb32, exact, atol=1e-3)


def test_widths_and_gradients() -> None:
    net = build_qnetwork("mlp-small", (1, 8, 8), 10, seed=0)
    x = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    y = torch.arange(16) % 10
    b = qaibp_bounds(net, x - 3, x + 3, y)
    assert len(b.widths) == 2 and all(float(w.detach()) >= 0 for w in b.widths)
    (b.margin_lb.sum() + sum(b.widths)).backward()
    for m in net.affine_layers():
        assert m.weight.grad is not None and float(m.weight.grad.abs().sum()) > 0
    # a wider box gives looser (smaller) margin bounds and wider intervals
    b2 = qaibp_bounds(net, x - 6, x + 6, y)
    assert bool((b2.margin_lb <= b.margin_lb + 1e-6).all())
    assert all(float(w2.detach()) >= float(w1.detach()) for w1, w2 in zip(b.widths, b2.widths))


def test_bad_inputs_raise_clear_errors() -> None:
    net = mlp_net(0, 2, 3, False, "half_up")
    x = torch.zeros(2, 2)
    with pytest.raises(InputError, match="labels"):
        qaibp_bounds(net, x, x, torch.tensor([0]))
    with pytest.raises(InputError, match="labels must lie"):
        qaibp_bounds(net, x, x, torch.tensor([0, 3]))
    with pytest.raises(InputError, match="exceeds"):
        qaibp_bounds(net, x + 1, x, torch.tensor([0, 1]))
    with pytest.raises(InputError, match="NaN"):
        qaibp_bounds(net, x * float("nan"), x, torch.tensor([0, 1]))
    with pytest.raises(InputError, match="shape"):
        qaibp_bounds(net, torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------ float IBP
def float_model(seed: int, conv: bool) -> nn.Sequential:
    torch.manual_seed(seed)
    if conv:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 12),
            nn.ReLU(),
            nn.Linear(12, 5),
        ).double()
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5)
    ).double()


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_float_ibp_contains_sampled_outputs(seed: int, conv: bool) -> None:
    model = float_model(seed, conv)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (3,), generator=g)
    eps = 0.05
    b = float_ibp_bounds(model, x - eps, x + eps, y)
    samples = x.unsqueeze(1) + eps * (
        2 * torch.rand(3, 500, 1, 8, 8, generator=g, dtype=torch.float64) - 1
    )
    corners = x.unsqueeze(1) + eps * torch.sign(torch.randn(3, 50, 1, 8, 8, generator=g)).double()
    for pts in (samples, corners):
        z = model(pts.reshape(-1, 1, 8, 8)).reshape(3, -1, 5)
        margins = z.gather(2, y.view(3, 1, 1).expand(3, z.shape[1], 1)) - z
        assert bool((margins >= b.margin_lb.unsqueeze(1) - 1e-12).all())
    # the singleton box gives the exact margins
    b0 = float_ibp_bounds(model, x, x, y)
    z0 = model(x)
    assert torch.allclose(b0.margin_lb, z0.gather(1, y[:, None]) - z0, atol=1e-12)


def test_float_ibp_certified_flags() -> None:
    model = float_model(0, False)
    x = torch.randint(0, 256, (20, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    y = model(x.double() / 256).argmax(1)
    at0 = float_ibp_certified(model, x, y, 0.0, 1 / 256)
    assert bool(at0.all())  # radius 0: every correctly classified input
    wide = float_ibp_certified(model, x, y, 255.0, 1 / 256)
    assert int(wide.sum()) <= int(at0.sum())
    with pytest.raises(InputError):
        float_ibp_bounds(nn.Sequential(nn.Tanh(), nn.Linear(3, 2)), x[:1], x[:1], y[:1])


def test_interval_requant_gradient_is_the_clipped_ste_of_fake_requantize() -> None:
    """The fused requantization node gives the values and gradients of fake_requantize."""
    from qcert.bounds.ibp import _IntervalRequant
    from qcert.quant import fake_requantize

    fmt = FixedPointFormat(4, False, 2)
    g = torch.Generator().manual_seed(0)
    for rounding in ("half_up", "half_even", "floor"):
        lo = (torch.rand(200, generator=g) * 6 - 1.5).requires_grad_()
        hi = (lo.detach() + torch.rand(200, generator=g) * 2).requires_grad_()
        w1, w2 = torch.randn(200, generator=g), torch.randn(200, generator=g)
        a, b = _IntervalRequant.apply(lo, hi, fmt, rounding)
        ((a * w1).sum() + (b * w2).sum()).backward()
        lo2, hi2 = lo.detach().clone().requires_grad_(), hi.detach().clone().requires_grad_()
        a2 = fake_requantize(lo2, fmt, rounding)
        b2 = fake_requantize(hi2, fmt, rounding)
        ((a2 * w1).sum() + (b2 * w2).sum()).backward()
        assert torch.equal(a, a2) and torch.equal(b, b2)
        assert torch.equal(lo.grad, lo2.grad) and torch.equal(hi.grad, hi2.grad)
        assert bool((lo.grad == 0).any()) and bool((lo.grad != 0).any())  # both regimes tested
