"""The complete verifier against exhaustive enumeration on small random QNNs, in both directions:
never ``robust`` when a counterexample exists, never ``vulnerable`` without one; BaB (every split
rule, with and without attacks) and the MILP agree on every query."""

from __future__ import annotations

import random

import pytest
import torch
from qnets import box_points, enumerable_net, random_layer, sample_queries

from qcert.bounds import eps_box, margin_lower_bounds
from qcert.quant import FixedPointFormat, QFlatten, QNetwork, QRequant, argmax_first
from qcert.verify import BabOptions, OutputSpec, SpecBounds, bab_search, milp_search, verify_sample

NO_ATTACK = dict(attack_steps=0, inner_every=0)


@pytest.mark.parametrize("seed", range(20))
def test_verdicts_match_enumeration(seed: int) -> None:
    net = enumerable_net(seed)
    rules = ["widest", "smear", "gradient", "bound", "bound:2"]
    for q, x, label, eps, truth in sample_queries(net, seed, 1000):
        rule = rules[(seed + q) % len(rules)]
        results = [
            verify_sample(net, x, label, eps, timeout=60),
            verify_sample(
                net, x, label, eps, timeout=60, options=BabOptions(split=rule, **NO_ATTACK)
            ),
            verify_sample(net, x, label, eps, timeout=60, method="milp"),
        ]
        for r in results:
            assert r.verdict == truth, (seed, q, label, eps, rule, r)
            if r.verdict in ("vulnerable", "misclassified"):
                cex = torch.tensor(r.counterexample).reshape(1, *net.input_shape)
                assert int(argmax_first(net.integer_forward(cex))[0]) == r.predicted != label
                assert int((cex[0] - x).abs().max()) <= eps
            else:
                assert r.counterexample is None


@pytest.mark.parametrize("seed", range(30, 42))
def test_bab_without_attacks_and_milp_without_bounds(seed: int) -> None:
    """The search itself (no PGD, no interval pre-filter in the MILP) decides correctly: the
    counterexamples come from the exact box-centre checks and the single-point boxes."""
    net = enumerable_net(seed)
    g = torch.Generator().manual_seed(seed)
    lo_v, hi_v = net.input_range
    x = torch.randint(lo_v, hi_v + 1, net.input_shape, generator=g)
    lo, hi = eps_box(net, x[None], 2)
    pts = box_points(lo[0], hi[0])
    cls = net.predict(pts)
    for label in range(net.num_classes):
        spec = OutputSpec.robustness(label, net.num_classes)
        truth = bool((cls != label).any())
        bab = bab_search(
            net, lo, hi, spec, timeout=60, options=BabOptions(split="widest", **NO_ATTACK)
        )
        milp = milp_search(net, lo, hi, spec, timeout=60, use_bounds=False)
        for out in (bab, milp):
            assert out.status == ("unsafe" if truth else "safe"), (seed, label, out)
            if truth:
                assert out.counterexample is not None
                z = net.integer_forward(out.counterexample[None])
                assert int(argmax_first(z)[0]) != label


@pytest.mark.parametrize("seed", range(12))
def test_spec_bounds_exact_and_arith_paths_agree(seed: int) -> None:
    net = enumerable_net(seed)
    g = torch.Generator().manual_seed(seed)
    lo_v, hi_v = net.input_range
    a = torch.randint(lo_v, hi_v + 1, (20, *net.input_shape), generator=g)
    b = torch.randint(lo_v, hi_v + 1, (20, *net.input_shape), generator=g)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    for label in range(net.num_classes):
        spec = OutputSpec.robustness(label, net.num_classes)
        fast, ref = SpecBounds(net, spec), SpecBounds(net, spec, arith_path="int64")
        assert fast.arith_path == "float64" and ref.arith_path == "int64"
        ub = fast.upper(lo, hi)
        assert torch.equal(ub, ref.upper(lo, hi))
        # the same numbers as qcert.bounds' fused margin bounds: ub(z_j - z_c) = -lb(z_c - z_j)
        lb = margin_lower_bounds(net, lo, hi, torch.full((20,), label))
        others = [j for j in range(net.num_classes) if j != label]
        assert torch.equal(ub, -lb[:, others])
        # exact values at points
        z = net.integer_forward(a)
        assert torch.equal(fast.values(a), z @ spec.A.t())
        assert torch.equal(ref.values(a), z @ spec.A.t())
        assert torch.equal(fast.upper(a, a), z @ spec.A.t())


def test_general_rational_spec_against_enumeration() -> None:
    from fractions import Fraction as Fr

    for seed in range(8):
        net = enumerable_net(100 + seed)
        k = net.num_classes
        rng = random.Random(seed)
        lo_v, hi_v = net.input_range
        lo = torch.full((1, *net.input_shape), lo_v)
        hi = torch.full((1, *net.input_shape), hi_v)
        pts = box_points(lo[0], hi[0])
        if pts.shape[0] > 5000:
            continue
        z = net.integer_forward(pts)
        for _ in range(4):
            disjuncts = []
            for _ in range(rng.choice([1, 2])):
                conj = []
                for _ in range(rng.choice([1, 2])):
                    coefs = [Fr(rng.randint(-4, 4), rng.choice([1, 2, 3])) for _ in range(k)]
                    op = rng.choice([">=", ">", "<=", "<"])
                    med = float(
                        torch.median((z.double() * torch.tensor([float(c) for c in coefs])).sum(1))
                    )
                    rhs = Fr(round(med * 4), 4) + Fr(rng.randint(-3, 3), 2)
                    conj.append((coefs, op, rhs))
                disjuncts.append(conj)
            spec = OutputSpec.from_rational(disjuncts, k)
            truth = torch.zeros(z.shape[0], dtype=torch.bool)
            for conj in disjuncts:
                ok = torch.ones(z.shape[0], dtype=torch.bool)
                for coefs, op, rhs in conj:
                    v = [sum(Fr(int(zz)) * c for zz, c in zip(row, coefs)) for row in z.tolist()]
                    cmp = {
                        ">=": lambda a, b: a >= b,
                        ">": lambda a, b: a > b,
                        "<=": lambda a, b: a <= b,
                        "<": lambda a, b: a < b,
                    }[op]
                    ok &= torch.tensor([cmp(vi, rhs) for vi in v])
                truth |= ok
            assert torch.equal(spec.holds(z), truth)
            want = "unsafe" if bool(truth.any()) else "safe"
            assert bab_search(net, lo, hi, spec, timeout=60).status == want
            assert milp_search(net, lo, hi, spec, timeout=60).status == want


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20, 320))
def test_verdicts_match_enumeration_many(seed: int) -> None:
    test_verdicts_match_enumeration(seed)
    test_bab_without_attacks_and_milp_without_bounds(seed)


def test_float32_arith_path_on_an_8bit_cnn_matches_int64() -> None:
    """8-bit weights and pixels: the exactness analysis picks float32 (direct convolutions,
    3×3 stride 1 included) and the bounds equal the int64 reference bit for bit."""
    from qcert.verify import NetBounds

    g = torch.Generator().manual_seed(0)
    w8, a8 = FixedPointFormat(8, True, 7), FixedPointFormat(8, False, 5)
    b8 = FixedPointFormat(8, True, 4)
    net = QNetwork(
        [
            random_layer(g, (8, 1, 3, 3), w8, b8, stride=1, padding=1),
            QRequant(a8, "half_up"),
            random_layer(g, (8, 8, 3, 3), w8, b8, stride=2),
            QRequant(a8, "half_even"),
            QFlatten(),
            random_layer(g, (10, 8 * 4 * 4), w8, b8),
        ],
        (1, 10, 10),
    )
    assert torch.float32 in NetBounds(net).dtypes
    x = torch.randint(0, 256, (64, 1, 10, 10), generator=g)
    r = torch.randint(0, 30, (64, 1, 10, 10), generator=g)
    lo, hi = (x - r).clamp(0, 255), (x + r).clamp(0, 255)
    for label in (0, 7):
        spec = OutputSpec.robustness(label, 10)
        fast, ref = SpecBounds(net, spec), SpecBounds(net, spec, arith_path="int64")
        assert torch.equal(fast.upper(lo, hi), ref.upper(lo, hi))
        assert torch.equal(fast.values(x), net.integer_forward(x) @ spec.A.t())
