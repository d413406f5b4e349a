"""The bab+milp portfolio agrees with exhaustive enumeration of every integer input in the box."""

from __future__ import annotations

import pytest
import torch
from qnets import box_points, small_mlp

import qcert.verify.query as query_mod
from qcert.bounds import eps_box
from qcert.quant import argmax_first
from qcert.verify import SearchOutcome, verify_sample


@pytest.mark.parametrize("bab_gives_up", [False, True])
def test_portfolio_matches_enumeration(monkeypatch, bab_gives_up) -> None:
    if bab_gives_up:  # every query reaches the MILP fallback
        monkeypatch.setattr(query_mod, "bab_search", lambda *a, **k: SearchOutcome("timeout"))
    seen = set()
    for seed in range(12):
        net = small_mlp(seed, 3, 3, logit_requant=seed % 2 == 1, rounding="half_even")
        x = torch.randint(0, 16, (1, 3), generator=torch.Generator().manual_seed(seed))
        y = int(net.predict(x)[0])
        for eps in (1, 3):
            lo, hi = eps_box(net, x, eps)
            pts = box_points(lo[0], hi[0])
            robust = bool((argmax_first(net.integer_forward(pts)) == y).all())
            res = verify_sample(net, x[0], y, eps, timeout=20.0, method="bab+milp")
            assert res.verdict == ("robust" if robust else "vulnerable")
            assert res.method == ("milp" if bab_gives_up else "bab")  # which method decided
            if res.verdict == "vulnerable":
                cex = torch.tensor(res.counterexample).reshape(1, 3)
                assert int(net.predict(cex)[0]) != y and bool(((cex >= lo) & (cex <= hi)).all())
            seen.add(res.verdict)
    assert seen == {"robust", "vulnerable"}
