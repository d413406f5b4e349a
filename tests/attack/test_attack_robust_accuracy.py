"""robust_accuracy: counterexamples are real and inside the clipped ε-box; the PGD robust accuracy
is an upper bound of the exact robust accuracy; ε is validated."""

from __future__ import annotations

import math

import pytest
import torch
from qnets import box_points, small_mlp

from qcert.attack import robust_accuracy
from qcert.bounds import eps_box
from qcert.errors import InputError
from qcert.quant import QNetwork


def small_net(seed: int) -> QNetwork:
    return small_mlp(seed, 3, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counterexamples_real_and_accuracy_bounds(seed: int) -> None:
    net = small_net(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 16, (30, 3), generator=g)
    # labels: mostly the net's own class, some wrong ones so that misclassification happens
    y = net.predict(x)
    y[::7] = (y[::7] + 1) % 3
    eps = 2
    out = robust_accuracy(net, x, y, eps, steps=10, batch_size=8)
    assert set(out) == {"n", "clean_acc", "robust_acc", "counterexamples"}
    assert out["n"] == 30
    assert out["clean_acc"] == pytest.approx(float((net.predict(x) == y).float().mean()))
    lo, hi = eps_box(net, x, eps)
    seen = set()
    for rec in out["counterexamples"]:
        i = rec["index"]
        assert i not in seen
        seen.add(i)
        pt = torch.tensor(rec["input"], dtype=torch.int64).reshape(1, 3)
        assert bool(((pt >= lo[i]) & (pt <= hi[i])).all())
        z = net.integer_forward(pt)
        pred = int((z[0] == z[0].max()).nonzero()[0])  # argmax, ties to the smallest index
        assert pred == rec["predicted"] != rec["label"] == int(y[i])
    # exact robust accuracy by enumeration: PGD's is an upper bound of it
    exact = 0
    for i in range(30):
        pts = box_points(lo[i], hi[i])
        exact += bool((net.predict(pts) == y[i]).all())
    assert exact / 30 <= out["robust_acc"] <= out["clean_acc"]
    assert math.isclose(out["robust_acc"], 1 - len(out["counterexamples"]) / 30)


@pytest.mark.parametrize("eps", [-1, 1.5, float("nan"), float("inf"), True, "2"])
def test_bad_eps(eps: object) -> None:
    net = small_net(0)
    x = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(InputError, match="eps"):
        robust_accuracy(net, x, torch.tensor([0, 1]), eps)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    net = small_net(0)
    x = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(InputError):
        robust_accuracy(net, x, torch.tensor([0, 1, 2]), 1)
    with pytest.raises(InputError):
        robust_accuracy(net, x[:0], torch.tensor([], dtype=torch.int64), 1)
    with pytest.raises(InputError):
        robust_accuracy(net, x + 0.5, torch.tensor([0, 1]), 1)
    with pytest.raises(InputError):
        robust_accuracy(net, x, torch.tensor([0, 1]), 1, batch_size=0)
    # an integral float eps is accepted
    assert robust_accuracy(net, x, torch.tensor([0, 1]), 2.0)["n"] == 2
