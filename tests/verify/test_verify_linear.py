"""Linear-relaxation bounds and the unit-splitting branch and bound against exhaustive enumeration
on small random QNNs (every rounding rule, signed and unsigned units, left shifts, convolutions,
average pooling, requantized logits with ties): no enumerated point ever exceeds a bound, whatever
the slopes and multipliers; the bounds are never looser than the interval bounds; the search's
verdicts agree with enumeration in both directions."""

from __future__ import annotations

import random

import pytest
import torch
from qnets import box_points, enumerable_net, sample_queries, truth_verdict

from qcert.bounds import eps_box
from qcert.errors import InputError
from qcert.quant import FixedPointFormat, QLinear, QNetwork, QRequant, Rounding, argmax_first
from qcert.quant.format import requantize
from qcert.verify import OutputSpec, SpecBounds
from qcert.verify.branching import refine_children
from qcert.verify.lbab import LinearBab, LinearBabOptions, linear_bab_search
from qcert.verify.linear import LinearBounds, _rounding_slack

F64 = torch.float64


def _accumulators(net: QNetwork, lb: LinearBounds, pts: torch.Tensor) -> list[torch.Tensor]:
    """The exact accumulator of every requantization layer at the points (flat)."""
    out, h = [], pts
    want = {u.index for u in lb.units}
    for i, layer in enumerate(net.layers):
        if i in want:
            out.append(h.reshape(h.shape[0], -1))
        h = layer.integer(h)
    return out


def _box(net: QNetwork, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lo_v, hi_v = net.input_range
    x = torch.randint(lo_v, hi_v + 1, (1, *net.input_shape), generator=g)
    return eps_box(net, x, 1 + seed % 3)


@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("shift", [-2, 0, 1, 2, 3, 5])
def test_rounding_slack_sandwiches_every_value(rounding: Rounding, shift: int) -> None:
    d_lo, d_hi = _rounding_slack(rounding, shift)
    fmt = FixedPointFormat(16, True, 0)
    z = torch.arange(-300, 301, dtype=torch.int64)
    y = requantize(z, shift, fmt, rounding).to(F64)
    v = z.to(F64) * 2.0**-shift
    assert bool((y >= v - d_lo).all()) and bool((y <= v + d_hi).all())


@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("shift", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("signs", ["mixed", "nonnegative", "nonpositive"])
def test_unit_lines_are_valid_and_exact_at_the_integers(
    rounding: Rounding, shift: int, signed: bool, signs: str
) -> None:
    """Every unit line holds at every integer of its range, whatever the slope (negative ones
    included), and for right shifts its intercept is the exact extreme of ``f(z) - a z`` over
    those integers (not only an envelope's)."""
    fmt = FixedPointFormat(3, signed, 4 - shift)
    w = QLinear.from_int(
        torch.ones(1, 1, dtype=torch.int64), None, FixedPointFormat(8, True, 4), None
    )
    net = QNetwork([w, QRequant(fmt, rounding)], (1,), FixedPointFormat(8, True, 0))
    lb = LinearBounds(net)
    g = torch.Generator().manual_seed(shift + 7)
    n = 200
    lo = torch.randint(-60, 60, (1, n), generator=g)
    hi = lo + torch.randint(0, 40, (1, n), generator=g)
    slopes = torch.rand(1, 3, n, generator=g, dtype=F64) * 2.0 ** (1 - max(shift, 0)) - 0.2
    slopes[:, 0] = 0.0
    if signs == "nonnegative":
        slopes = slopes.abs()
    elif signs == "nonpositive":
        slopes = -slopes.abs()
    a_up, b_up, a_lo, b_lo = lb.relax(0, lo, hi, slopes, slopes)
    for j in range(n):
        z = torch.arange(int(lo[0, j]), int(hi[0, j]) + 1)
        y = requantize(z, 4, fmt, rounding).to(F64)
        for r in range(3):
            up = y - a_up[0, r, j] * z.to(F64)
            dn = y - a_lo[0, r, j] * z.to(F64)
            assert float(up.max()) <= float(b_up[0, r, j]) and float(dn.min()) >= float(
                b_lo[0, r, j]
            )
            if shift > 0 and int(y[0]) != int(y[-1]):
                assert float(b_up[0, r, j]) - float(up.max()) < 1e-9
                assert float(dn.min()) - float(b_lo[0, r, j]) < 1e-9


@pytest.mark.parametrize("seed", range(40))
def test_bounds_hold_at_every_point(seed: int) -> None:
    net = enumerable_net(seed)
    lb = LinearBounds(net)
    lo, hi = _box(net, seed)
    flo, fhi = lo.reshape(1, -1), hi.reshape(1, -1)
    pts = box_points(lo[0], hi[0]).reshape(-1, *net.input_shape)
    ibp = lb.ibp(flo, fhi)
    bounds = lb.refine(flo, fhi)
    for (l, u), (il, iu), acc in zip(bounds, ibp, _accumulators(net, lb, pts)):
        assert bool((l >= il).all()) and bool((u <= iu).all())  # never looser than intervals
        assert bool((acc >= l).all()) and bool((acc <= u).all()), seed
    out = net.integer_forward(pts)
    g = torch.Generator().manual_seed(seed)
    label = int(torch.randint(0, net.num_classes, (1,), generator=g))
    spec = OutputSpec.robustness(label, net.num_classes)
    true_max = (out @ spec.A.t()).max(0).values
    rows = spec.A.shape[0]
    C = spec.A.to(F64).unsqueeze(0)
    for trial in range(4):
        slopes = betas = None
        if trial:
            slopes = [
                tuple(
                    torch.rand(1, rows, u.size, generator=g, dtype=F64) * 3 * u.scale
                    for _ in range(2)
                )
                for u in lb.units
            ]
            betas = [
                tuple(torch.rand(1, rows, u.size, generator=g, dtype=F64) * trial for _ in range(2))
                for u in lb.units
            ]
        val, err, _ = lb.backward(len(lb.units), C, flo, fhi, bounds, slopes, betas)
        assert bool((err > 0).all())
        assert bool((true_max.to(F64) <= val[0] + err[0]).all()), (seed, trial)


@pytest.mark.parametrize("seed", range(20))
def test_split_subproblems_bound_their_points(seed: int) -> None:
    """A unit range narrowed by a split (and β on it) still bounds every point that meets it."""
    net = enumerable_net(seed)
    lb = LinearBounds(net)
    lo, hi = _box(net, seed + 7)
    flo, fhi = lo.reshape(1, -1), hi.reshape(1, -1)
    pts = box_points(lo[0], hi[0]).reshape(-1, *net.input_shape)
    bounds = lb.refine(flo, fhi)
    accs = _accumulators(net, lb, pts)
    rng = random.Random(seed)
    k = rng.randrange(len(bounds))
    l, u = bounds[k]
    i = rng.randrange(l.shape[1])
    if int(u[0, i]) == int(l[0, i]):
        pytest.skip("the chosen unit has a single value")
    t = rng.randrange(int(l[0, i]), int(u[0, i]))
    for upper_half in (True, False):
        nl, nu = l.clone(), u.clone()
        keep = accs[k][:, i] <= t if upper_half else accs[k][:, i] >= t + 1
        if upper_half:
            nu[0, i] = t
        else:
            nl[0, i] = t + 1
        if not bool(keep.any()):
            continue
        sub = list(bounds)
        sub[k] = (nl, nu)
        spec = OutputSpec.robustness(rng.randrange(net.num_classes), net.num_classes)
        C = spec.A.to(F64).unsqueeze(0)
        rows = spec.A.shape[0]
        betas = [
            tuple(torch.rand(1, rows, un.size, dtype=F64) * 5 for _ in range(2)) for un in lb.units
        ]
        val, err, _ = lb.backward(len(lb.units), C, flo, fhi, sub, None, betas)
        true_max = (net.integer_forward(pts[keep]) @ spec.A.t()).max(0).values
        assert bool((true_max.to(F64) <= val[0] + err[0]).all()), (seed, upper_half)


@pytest.mark.parametrize("seed", range(40))
def test_refined_children_bound_their_points_in_any_chunking(seed: int) -> None:
    """Children of splits at the first unit layer, re-tightened by linear bounds: every point of a
    child stays inside its ranges, the ranges are no looser than before, and taking the children
    a few rows at a time gives the same ranges as all at once."""
    net = enumerable_net(seed)
    search = LinearBab(net)
    lb = search.lb
    if len(lb.units) < 2:
        pytest.skip("one unit layer: nothing after the split to re-tighten")
    lo, hi = _box(net, seed + 3)
    flo, fhi = lo.reshape(1, -1), hi.reshape(1, -1)
    pts = box_points(lo[0], hi[0]).reshape(-1, *net.input_shape)
    accs = _accumulators(net, lb, pts)
    root = lb.refine(flo, fhi)
    l0, u0 = root[0]
    kids = []
    for i in range(l0.shape[1]):
        if int(u0[0, i]) > int(l0[0, i]):
            t = (int(l0[0, i]) + int(u0[0, i])) // 2
            for lower in (True, False):
                nl, nu = l0.clone(), u0.clone()
                if lower:
                    nu[0, i] = t
                else:
                    nl[0, i] = t + 1
                kids.append((nl, nu, accs[0][:, i] <= t if lower else accs[0][:, i] >= t + 1))
    if not kids:
        pytest.skip("no unit of the first layer can be split")
    children = [(torch.cat([k[0] for k in kids]), torch.cat([k[1] for k in kids]))]
    children += [(l.expand(len(kids), -1), u.expand(len(kids), -1)) for l, u in root[1:]]
    layer = torch.zeros(len(kids), dtype=torch.int64)
    whole = refine_children(search, flo, fhi, children, layer, 10_000)
    parts = refine_children(search, flo, fhi, children, layer, 10_000, chunk_rows=2)
    for (a, b), (c, d), (e, f) in zip(whole, parts, children):
        assert torch.equal(a, c) and torch.equal(b, d)
        assert bool((a >= e).all()) and bool((b <= f).all())
    for j, (_, _, keep) in enumerate(kids):
        for k in range(1, len(lb.units)):
            z = accs[k][keep]
            assert bool((z >= whole[k][0][j]).all()) and bool((z <= whole[k][1][j]).all())


def test_large_accumulators_stay_sound() -> None:
    """16-bit weights and 12-bit inputs: accumulators near 2**33, still sound."""
    g = torch.Generator().manual_seed(3)
    wf = FixedPointFormat(16, True, 8)
    layers = [
        QLinear.from_int(torch.randint(-32768, 32768, (6, 3), generator=g), None, wf, None),
        QRequant(FixedPointFormat(10, False, 0), "half_even"),
        QLinear.from_int(torch.randint(-32768, 32768, (3, 6), generator=g), None, wf, None),
    ]
    net = QNetwork(layers, (3,), FixedPointFormat(12, False, 0))
    lb = LinearBounds(net)
    lo = torch.tensor([[1000, 2000, 3000]])
    hi = lo + 3
    pts = box_points(lo[0], hi[0]).reshape(-1, *net.input_shape)
    spec = OutputSpec.robustness(0, 3)
    val, err, _ = lb.backward(len(lb.units), spec.A.to(F64).unsqueeze(0), lo, hi, lb.refine(lo, hi))
    true_max = (net.integer_forward(pts) @ spec.A.t()).max(0).values
    assert bool((true_max.to(F64) <= val[0] + err[0]).all())
    assert float(err.max()) < 1.0  # the error term stays far below one integer step


NO_ATTACK = LinearBabOptions(attack_steps=0, root_iters=2, iters=2, batch=4, input_split_dims=0)
NO_ATTACK_F64 = LinearBabOptions(
    attack_steps=0, root_iters=2, iters=2, batch=4, input_split_dims=0, opt_dtype="float64"
)
NO_ATTACK_GAIN = LinearBabOptions(
    attack_steps=0, root_iters=2, iters=2, batch=4, input_split_dims=0, branching="gain"
)
NO_ATTACK_MIXED = LinearBabOptions(
    attack_steps=0, root_iters=2, iters=2, batch=4, input_split_dims=0, branching="mixed"
)


def _search_matches_enumeration(seed: int) -> None:
    net = enumerable_net(seed)
    for q, x, label, eps, truth in sample_queries(net, seed, 500):
        if truth == "misclassified":
            continue
        lo, hi = eps_box(net, x[None], eps)
        spec = OutputSpec.robustness(label, net.num_classes)
        all_options = (NO_ATTACK, NO_ATTACK_F64, NO_ATTACK_GAIN, NO_ATTACK_MIXED)
        all_options = (*all_options, LinearBabOptions(input_split_dims=0))
        for options in (*all_options, LinearBabOptions()):
            res = linear_bab_search(net, lo, hi, spec, timeout=60, options=options)
            assert res.status == ("safe" if truth == "robust" else "unsafe"), (seed, q, res)
            if res.status == "unsafe":
                cex = res.counterexample.reshape(1, *net.input_shape)
                assert int(argmax_first(net.integer_forward(cex))[0]) != label
                assert bool((cex >= lo).all()) and bool((cex <= hi).all())


@pytest.mark.parametrize("seed", range(12))
def test_search_matches_enumeration(seed: int) -> None:
    _search_matches_enumeration(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12, 120))
def test_search_matches_enumeration_many(seed: int) -> None:
    _search_matches_enumeration(seed)


def _corner_query(seed: int) -> tuple[QNetwork, torch.Tensor, int, OutputSpec]:
    """A network, its lowest input point, that point's class and its robustness spec."""
    net = enumerable_net(seed)
    x = torch.full((1, *net.input_shape), net.input_range[0], dtype=torch.int64)
    label = int(net.predict(x)[0])
    return net, x, label, OutputSpec.robustness(label, net.num_classes)


def test_prebuilt_bounds_and_single_points() -> None:
    net, x, label, spec = _corner_query(4)
    res = linear_bab_search(net, x, x, spec, bounds=SpecBounds(net, spec))
    assert res.status == "safe"
    other = OutputSpec.robustness((label + 1) % net.num_classes, net.num_classes)
    res = linear_bab_search(net, x, x, other)
    assert res.status == "unsafe" and torch.equal(res.counterexample.reshape(x.shape), x)


def test_the_method_is_registered_and_follows_weight_changes() -> None:
    from qcert.verify.query import verify_query

    net, x, label, spec = _corner_query(2)
    assert verify_query(net, x, x, spec, method="linear-bab").proven
    with torch.no_grad():  # a change in place: the cached searcher must not be reused
        for p in net.parameters():
            p.data.mul_(-1)
    lo, hi = eps_box(net, x, 2)
    truth = truth_verdict(net, x[0], label, 2)
    res = verify_query(net, lo, hi, spec, method="linear-bab")
    assert res.decided_by == "linear-bab"
    assert res.proven == (truth == "robust")


def test_opt_dtype_is_validated() -> None:
    assert LinearBabOptions().opt_dtype == "float32"
    with pytest.raises(InputError, match="opt_dtype"):
        LinearBabOptions(opt_dtype="float16")
    with pytest.raises(InputError, match="branching"):
        LinearBabOptions(branching="fsb")


@pytest.mark.parametrize("seed", range(16))
def test_float32_steps_return_rigorous_float64_bounds(seed: int) -> None:
    """Optimization steps in float32 only choose the parameters: the bound returned (and its
    λ's) is exactly a rigorous float64 pass at the returned parameters, and holds at every
    point, on the whole box and on a split subproblem (with β); the float32 pass itself carries
    no error term and is close to the float64 one."""
    net = enumerable_net(seed)
    search = LinearBab(net, LinearBabOptions(opt_dtype="float32", lr=0.5))
    lb = search.lb
    lo, hi = _box(net, seed + 3)
    flo, fhi = lo.reshape(1, -1), hi.reshape(1, -1)
    pts = box_points(lo[0], hi[0]).reshape(-1, *net.input_shape)
    bounds = lb.refine(flo, fhi)
    accs = _accumulators(net, lb, pts)
    spec = OutputSpec.robustness(seed % net.num_classes, net.num_classes)
    C = spec.A.to(F64).unsqueeze(0)
    rows = spec.A.shape[0]
    # a split subproblem: the upper half of the widest unit of a random layer
    rng = random.Random(seed)
    k = rng.randrange(len(bounds))
    l, u = bounds[k]
    i = int((u - l)[0].argmax())
    sub, keep = list(bounds), torch.ones(pts.shape[0], dtype=torch.bool)
    if int(u[0, i]) > int(l[0, i]):
        t = (int(l[0, i]) + int(u[0, i])) // 2
        nu = u.clone()
        nu[0, i] = t
        sub[k] = (l, nu)
        keep = accs[k][:, i] <= t
    mask = [(a != ra) | (b != rb) for (a, b), (ra, rb) in zip(sub, bounds)]
    for bnds, split_mask, pts_in in ((bounds, None, pts), (sub, mask, pts[keep])):
        params = search.init_params(bnds, rows)
        if split_mask is not None:
            for pair in params.betas:
                for t_ in pair:
                    t_.fill_(0.5)
        with torch.enable_grad():
            ub, lams, lam_in, out = search.bound(
                C, flo, fhi, bnds, params, 4, split_mask, spec.b.to(F64).unsqueeze(0)
            )
        assert out is not None
        assert all(t.dtype == F64 for t in out.tensors())
        scales = search._scales(bnds)
        slopes = [(p[0] * s, p[1] * s) for p, s in zip(out.slopes, scales)]
        betas = search._betas(out, split_mask)
        val, err, ref_lams = lb.backward(
            len(lb.units), C, flo, fhi, bnds, slopes, betas, want_lambdas=True
        )
        assert torch.equal(ub, torch.floor(val + err).to(torch.int64)), seed
        for got, ref in zip([*lams, lam_in], ref_lams):
            assert got.dtype == F64 and torch.equal(got, ref)
        if pts_in.shape[0]:
            true_max = (net.integer_forward(pts_in) @ spec.A.t()).max(0).values
            assert bool((true_max <= ub[0]).all()), seed
        # the float32 pass: an estimate without error term, near the float64 value
        s32 = [(a.float(), b.float()) for a, b in slopes]
        b32 = None if betas is None else [(a.float(), b.float()) for a, b in betas]
        v32, e32, _ = lb.backward(len(lb.units), C, flo, fhi, bnds, s32, b32, dtype=torch.float32)
        assert v32.dtype == torch.float32 and not bool(e32.any())
        assert bool(((v32.double() - val).abs() <= 1e-3 * (1 + val.abs())).all())


@pytest.mark.parametrize("seed", range(12))
def test_float32_optimized_intermediate_bounds_hold(seed: int) -> None:
    """α-CROWN's intermediate bounds with float32 steps stay sound and within the chords'."""
    net = enumerable_net(seed)
    search = LinearBab(net, LinearBabOptions(opt_dtype="float32"))
    lo, hi = _box(net, seed + 11)
    flo, fhi = lo.reshape(1, -1), hi.reshape(1, -1)
    pts = box_points(lo[0], hi[0]).reshape(-1, *net.input_shape)
    root = search.lb.refine(flo, fhi)
    opt = search.optimize_intermediate(flo, fhi, root, 6, 512)
    for (l, u), (rl, ru), acc in zip(opt, root, _accumulators(net, search.lb, pts)):
        assert bool((l >= rl).all()) and bool((u <= ru).all())
        assert bool((acc >= l).all()) and bool((acc <= u).all()), seed
