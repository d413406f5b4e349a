"""The metric's bound, the exact knapsack search, the budget, and the quantized networks it builds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from qnets import fit
from torch import nn

from qcert.data import load
from qcert.errors import FormatError, InputError
from qcert.layerwise.build import quantize_with_formats
from qcert.layerwise.metric import deviation_bound, float_forward64, profile
from qcert.layerwise.search import STRATEGIES, allocate, quantize
from qcert.quant import FixedPointFormat, from_float
from qcert.quant.accuracy import accuracy
from qcert.quant.floatmodel import FloatModel


@pytest.fixture(scope="module")
def digits() -> tuple[FloatModel, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small MLP trained (clean, full batch) on sklearn digits, with its data."""
    tr, te = load("digits", "train"), load("digits", "test")
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    model = FloatModel(module, (1, 8, 8), 1 / 256, [str(i) for i in range(10)])
    fit(model.logits, module.parameters(), tr.images.float(), tr.labels, steps=150, lr=1e-2)
    module.eval()
    return model, tr.images[:256], tr.labels[:256], te.images, te.labels


def float_acc(model: FloatModel, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.logits(x).argmax(1) == y).float().mean())


# ---------------------------------------------------------------- the knapsack


def test_allocate_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        layers = 1 + trial % 4
        opts = 1 + (trial * 7) % 5
        costs = torch.randint(1, 30, (layers, opts), generator=gen).tolist()
        values = torch.rand((layers, opts), generator=gen).tolist()
        budget = int(torch.randint(layers, 30 * layers, (1,), generator=gen))
        feasible = [
            pick
            for pick in itertools.product(range(opts), repeat=layers)
            if sum(costs[l][k] for l, k in enumerate(pick)) <= budget
        ]
        if not feasible:
            with pytest.raises(InputError, match="fits the budget"):
                allocate(costs, values, budget)
            continue
        best = min(sum(values[l][k] for l, k in enumerate(p)) for p in feasible)
        got = allocate(costs, values, budget)
        assert sum(costs[l][k] for l, k in enumerate(got)) <= budget
        assert sum(values[l][k] for l, k in enumerate(got)) == pytest.approx(best, abs=1e-12)


def test_allocate_rejects_ragged_tables() -> None:
    with pytest.raises(InputError, match="same shape"):
        allocate([[1, 2]], [[0.5]], 10)


# ---------------------------------------------------------------- the bound (Proposition 1)


def random_model(seed: int, conv: bool, signed_link: bool) -> FloatModel:
    torch.manual_seed(seed)
    if conv:
        mods: list[nn.Module] = [nn.Conv2d(1, 3, 3, 2, 1), nn.ReLU(), nn.Flatten()]
        width = 3 * 4 * 4
    else:
        mods, width = [nn.Flatten()], 64
    mods += [nn.Linear(width, 12)]
    if not signed_link:
        mods += [nn.ReLU()]
    mods += [nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)]
    return FloatModel(nn.Sequential(*mods).eval(), (1, 8, 8), 1 / 256)


@pytest.mark.parametrize("norm", ["2", "inf"])
@pytest.mark.parametrize(("conv", "signed_link"), [(False, False), (True, False), (True, True)])
def test_bound_holds_for_every_input(norm: str, conv: bool, signed_link: bool) -> None:
    """‖Q(x) − F(x)‖ ≤ Σ L_{>l}(‖ΔW_l‖‖â_{l−1}‖ + ‖Δb_l‖ + ‖e_l‖), coarse formats with clipping,
    and with an input perturbation ‖Q(x+δ) − F(x)‖ ≤ L_F‖δ‖ + bound(x+δ)."""
    gen = torch.Generator().manual_seed(5)
    for seed in range(3):
        model = random_model(seed, conv, signed_link)
        x = torch.randint(0, 256, (40, 1, 8, 8), generator=gen)
        n_aff = 4 if conv else 3
        for bits in (2, 3, 6):
            w_fmts = [FixedPointFormat(bits, True, bits + 1 + seed) for _ in range(n_aff)]
            a_fmts = [FixedPointFormat(bits, False, bits - 2 + seed) for _ in range(n_aff - 1)]
            net = quantize_with_formats(model, w_fmts, a_fmts)
            bound, actual = deviation_bound(model, net, x, norm)
            assert bool((actual <= bound * (1 + 1e-6) + 1e-12).all())
            assert float(actual.max()) > 0
            # the ε-ball version: compare Q at x + δ with F at x
            xd = (x + torch.randint(-3, 4, x.shape, generator=gen)).clamp(0, 255)
            bound_d, _ = deviation_bound(model, net, xd, norm)
            lip = math.prod(p.lip for p in profile(model, x[:1], None, norm))
            delta = (xd - x).double().flatten(1) / 256
            dn = delta.norm(dim=1) if norm == "2" else delta.abs().amax(dim=1)
            q = net.integer_forward(xd).double() * 2.0**-net.logit_frac
            diff = q - float_forward64(model, x)
            dev = diff.norm(dim=1) if norm == "2" else diff.abs().amax(dim=1)
            assert bool((dev <= (lip * dn + bound_d) * (1 + 1e-6)).all())


def test_bound_also_covers_from_float_networks(digits) -> None:  # noqa: ANN001
    model, cx, _, tx, _ = digits
    net = from_float(model.module, cx, bits=3, input_scale=model.input_scale)
    bound, actual = deviation_bound(model, net, tx[:100])
    assert bool((actual <= bound * (1 + 1e-6)).all())


# ---------------------------------------------------------------- strategies and budgets


def check_exact(net, x: torch.Tensor) -> None:  # noqa: ANN001
    """The built network is a valid QNetwork whose float64 simulation is its integer semantics."""
    assert net.exact_in(torch.float64)
    fake = net(x.double()) * 2.0**net.logit_frac
    assert torch.equal(fake.to(torch.int64), net.integer_forward(x))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_respect_the_budget_and_stay_accurate(strategy: str, digits) -> None:  # noqa: ANN001
    model, cx, cy, tx, ty = digits
    acc_float = float_acc(model, tx.float(), ty)
    assert acc_float > 0.85
    budgets = [8, 5, 3] if strategy == "uniform" else [8, 5, 3, 2.6]
    for budget in budgets:
        net, res = quantize(model, cx, cy, strategy, budget, eps=8, pgd_steps=3)
        params = [m.weight.numel() for m in net.affine_layers()]
        bits = [m.weight_format.bits for m in net.affine_layers()]
        assert bits == res.bits and params == res.params
        avg = sum(n * b for n, b in zip(params, bits)) / sum(params)
        assert avg == pytest.approx(res.avg_bits)
        assert avg <= budget + 1e-12 and all(2 <= b <= 8 for b in bits)
        if strategy == "uniform":
            assert bits == [budget] * 3
        check_exact(net, tx[:50])
        acc = accuracy(net, tx, ty)
        if budget == 8:
            assert acc >= acc_float - 0.03
        assert acc >= (0.8 if budget >= 5 else 0.5), (strategy, budget, acc)
        assert net.meta["quantize"]["strategy"] == strategy


def test_lipschitz_minimises_its_metric(digits) -> None:  # noqa: ANN001
    model, cx, cy, _, _ = digits
    for budget in (3, 4.5):
        _, lip = quantize(model, cx, cy, "lipschitz", budget, eps=8, pgd_steps=3)
        _, mse = quantize(model, cx, cy, "mse", budget, eps=8, pgd_steps=3)
        assert lip.objective == pytest.approx(lip.metric, rel=1e-9)
        # mse's formats are among lipschitz's candidates, on the same calibration points
        assert lip.metric <= mse.metric * (1 + 1e-9)


def test_data_weight_term_is_tighter(digits) -> None:  # noqa: ANN001
    model, cx, cy, _, _ = digits
    _, op = quantize(model, cx, cy, "lipschitz", 4, eps=8, pgd_steps=3)
    _, da = quantize(model, cx, cy, "lipschitz", 4, eps=8, pgd_steps=3, weight_term="data")
    assert da.metric <= op.metric
    assert da.avg_bits <= 4


def test_build_uses_the_given_formats(digits) -> None:  # noqa: ANN001
    model, _, _, tx, _ = digits
    w = [FixedPointFormat(b, True, f) for b, f in [(5, 7), (3, 4), (8, 9)]]
    a = [FixedPointFormat(4, False, 2), FixedPointFormat(6, False, 3)]
    net = quantize_with_formats(model, w, a)
    assert [m.weight_format for m in net.affine_layers()] == w
    assert [m.format for m in net.layers if m.kind == "requant"] == a
    check_exact(net, tx[:20])
    with pytest.raises(FormatError, match="weight formats"):
        quantize_with_formats(model, w[:2], a)
    with pytest.raises(FormatError, match="activation formats"):
        quantize_with_formats(model, w, a[:1])


def test_bad_arguments(digits) -> None:  # noqa: ANN001
    model, cx, cy, _, _ = digits
    with pytest.raises(InputError, match="unknown strategy"):
        quantize(model, cx, cy, "random", 4)
    with pytest.raises(InputError, match="avg_bits must lie"):
        quantize(model, cx, cy, "mse", 1.5)
    with pytest.raises(InputError, match="avg_bits must lie"):
        quantize(model, cx, cy, "mse", float("nan"))
    with pytest.raises(InputError, match="whole number"):
        quantize(model, cx, cy, "uniform", 3.5)
    with pytest.raises(InputError, match="needs eps"):
        quantize(model, cx, cy, "lipschitz", 4)
    with pytest.raises(InputError, match="weight_term"):
        quantize(model, cx, cy, "mse", 4, weight_term="spectral")
    with pytest.raises(InputError, match="labels"):
        quantize(model, cx, cy[:3], "mse", 4)
    with pytest.raises(InputError, match="model expects"):
        quantize(model, cx.view(-1, 64), cy, "mse", 4)
    with pytest.raises(InputError, match="NaN"):
        profile(model, torch.full((2, 1, 8, 8), float("nan")))
