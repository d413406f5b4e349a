"""PGD on the integer network: every success is real, inside the box, and found where brute force
says a counterexample exists in a good share of cases."""

from __future__ import annotations

import itertools

import pytest
import torch
from qnets import box_points, small_mlp

from qcert.attack import PGD, Goal, pgd_attack
from qcert.bounds import eps_box
from qcert.errors import InputError
from qcert.quant import QNetwork, argmax_first


def small_net(seed: int, d: int, k: int, logit_requant: bool, rounding: str) -> QNetwork:
    return small_mlp(seed, d, k, logit_requant, rounding, hidden=6)


@pytest.mark.parametrize("rounding", ["half_up", "half_even", "floor"])
@pytest.mark.parametrize("logit_requant", [False, True])
def test_successes_are_real_and_found_where_they_exist(rounding: str, logit_requant: bool) -> None:
    exist = found = 0
    for seed in range(6):
        net = small_net(seed, 3, 3, logit_requant, rounding)
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.randint(0, 16, (6, 3), generator=g)
        y = net.predict(x)
        lo, hi = eps_box(net, x, 2)
        res = pgd_attack(net, lo, hi, y, steps=10, seed=seed)
        assert res.adv.dtype == torch.int64 and res.adv.shape == x.shape
        assert bool(((res.adv >= lo) & (res.adv <= hi)).all()), "adversarial point left its box"
        z = net.integer_forward(res.adv)  # our own re-check with the reference executor
        assert torch.equal(res.predicted, argmax_first(z))
        for i in range(6):
            truth = bool((net.predict(box_points(lo[i], hi[i])) != y[i]).any())
            if bool(res.success[i]):
                assert int(argmax_first(z[i : i + 1])[0]) != int(y[i])
                assert truth
            exist += truth
            found += bool(res.success[i])
    assert exist > 0
    assert found >= 0.7 * exist, f"PGD found {found} of {exist} existing counterexamples"


def test_margin_loss_and_targets_reach_other_classes() -> None:
    net = small_net(7, 3, 4, False, "half_up")
    x = torch.randint(0, 16, (16, 3), generator=torch.Generator().manual_seed(3))
    y = net.predict(x)
    lo, hi = eps_box(net, x, 3)
    truth = torch.tensor(
        [bool((net.predict(box_points(lo[i], hi[i])) != y[i]).any()) for i in range(16)]
    )
    for loss in ("targeted", "margin"):
        res = pgd_attack(net, lo, hi, y, steps=15, restarts=2, loss=loss)
        assert not bool((res.success & ~truth).any())
        assert bool((res.predicted[res.success] != y[res.success]).all())
        assert int(res.success.sum()) >= 0.7 * int(truth.sum())


def test_cheap_points_alone_and_determinism() -> None:
    net = small_net(11, 2, 3, True, "half_even")
    pts = box_points(torch.tensor([0, 0]), torch.tensor([15, 15]))
    y = net.predict(pts)
    # a label that the x0 point itself violates: steps=0 must still find it via x0
    wrong = (y + 1) % 3
    res = pgd_attack(net, pts, pts, wrong, steps=0, x0=pts)
    assert bool(res.success.all()) and torch.equal(res.adv, pts)
    # a single-point box whose label is right can never be attacked
    res = pgd_attack(net, pts, pts, y, steps=3)
    assert not bool(res.success.any())
    lo, hi = eps_box(net, pts[:20], 2)
    a = pgd_attack(net, lo, hi, y[:20], steps=5, seed=4)
    b = pgd_attack(net, lo, hi, y[:20], steps=5, seed=4)
    assert torch.equal(a.adv, b.adv) and torch.equal(a.success, b.success)


def test_goal_misclassification_matches_tie_rule() -> None:
    # integer logits with many ties: the goal is reached exactly when argmax_first != label
    z = torch.tensor(list(itertools.product(range(-1, 2), repeat=3)), dtype=torch.int64)
    for y in range(3):
        labels = torch.full((z.shape[0],), y)
        goal = Goal.misclassification(labels, 3)
        assert torch.equal(goal.reached(z), argmax_first(z) != y)


def test_general_goal_is_rechecked() -> None:
    net = small_net(5, 2, 3, False, "floor")
    lo = torch.zeros(1, 2, dtype=torch.int64)
    hi = torch.full((1, 2), 15, dtype=torch.int64)
    # goal: z_0 - z_1 >= 1 and z_2 - z_1 >= 0 (one target with two rows)
    c = torch.tensor([[[[1, -1, 0], [0, -1, 1]]]])
    thr = torch.tensor([[[1, 0]]])
    goal = Goal(c, thr)
    res = PGD(net, steps=10, restarts=2)(lo, hi, goal=goal)
    z = net.integer_forward(box_points(lo[0], hi[0]))
    truth = bool(((z[:, 0] - z[:, 1] >= 1) & (z[:, 2] - z[:, 1] >= 0)).any())
    if bool(res.success[0]):
        assert truth
        za = net.integer_forward(res.adv)[0]
        assert int(za[0] - za[1]) >= 1 and int(za[2] - za[1]) >= 0


def test_bad_arguments_raise_clear_errors() -> None:
    net = small_net(0, 3, 3, False, "half_up")
    x = torch.randint(0, 16, (2, 3), generator=torch.Generator().manual_seed(0))
    lo, hi = eps_box(net, x, 1)
    y = net.predict(x)
    with pytest.raises(InputError, match="exceeds"):
        pgd_attack(net, hi, lo, y)
    with pytest.raises(InputError, match="shape"):
        pgd_attack(net, lo[:, :2], hi[:, :2], y)
    with pytest.raises(InputError, match="labels"):
        pgd_attack(net, lo, hi, torch.tensor([0, 3]))
    with pytest.raises(InputError, match="labels"):
        pgd_attack(net, lo, hi, torch.tensor([0]))
    with pytest.raises(InputError, match="steps"):
        pgd_attack(net, lo, hi, y, steps=-1)
    with pytest.raises(InputError, match="loss"):
        pgd_attack(net, lo, hi, y, loss="ce")
    with pytest.raises(InputError, match="lie in"):
        pgd_attack(net, lo, hi + 100, y)
    with pytest.raises(InputError, match="x0"):
        pgd_attack(net, lo, hi, y, x0=x[:1])


def test_fake_forward_matches_network_forward() -> None:
    from qcert.attack import FakeForward

    for seed, requant in ((0, False), (1, True)):
        net = small_net(seed, 3, 4, requant, "half_even")
        x = torch.rand(64, 3, generator=torch.Generator().manual_seed(seed)) * 20 - 2
        fast = FakeForward(net)(x)
        assert torch.equal(fast, net(x) * 2.0**net.logit_frac)
