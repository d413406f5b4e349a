"""One query function serves dataset mode and VNN-LIB mode: the same methods, the same portfolio,
the same re-check of every counterexample, and one place to register a new method."""

from __future__ import annotations

import pytest
import torch
from qnets import small_mlp

import qcert.verify.query as query_mod
from qcert.errors import InputError
from qcert.quant import QNetwork
from qcert.verify import METHODS, SearchOutcome, register_method, verify_sample, verify_vnnlib


def robustness_property(x: list[int], eps: int, label: int) -> str:
    """VNN-LIB: the L∞ ball of radius ``eps`` around ``x`` (3 inputs, 4-bit), unsafe if another of
    the 3 logits is ≥ the label's."""
    lines = [f"(declare-const X_{i} Real)" for i in range(3)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(3)]
    for i, v in enumerate(x):
        lines += [
            f"(assert (>= X_{i} {max(0, v - eps)}))",
            f"(assert (<= X_{i} {min(15, v + eps)}))",
        ]
    ors = " ".join(f"(>= Y_{j} Y_{label})" for j in range(3) if j != label)
    return "\n".join([*lines, f"(assert (or {ors}))"])


def point(net: QNetwork, seed: int) -> tuple[torch.Tensor, int]:
    x = torch.randint(0, 16, (1, 3), generator=torch.Generator().manual_seed(seed))
    return x, int(net.predict(x)[0])


def test_vnnlib_bab_plus_milp_is_the_portfolio(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--vnnlib`` with ``--method bab+milp`` gives branch and bound its share of the time first,
    then the MILP (it used to run only the MILP)."""
    net = small_mlp(3, 3, 3)
    x, y = point(net, 3)
    text = robustness_property(x[0].tolist(), 2, y)
    assert verify_vnnlib(net, text, method="bab+milp", timeout=20).decided_by == "bab"
    budgets: list[float] = []

    def gives_up(*args: object, timeout: float, **kw: object) -> SearchOutcome:
        budgets.append(timeout)
        return SearchOutcome("timeout")

    monkeypatch.setattr(query_mod, "bab_search", gives_up)
    res = verify_vnnlib(net, text, method="bab+milp", timeout=20)
    assert len(budgets) == 1 and budgets[0] <= 20 * query_mod.PORTFOLIO_BAB_SHARE
    assert res.decided_by == "milp" and res.result in ("sat", "unsat")
    assert verify_sample(net, x, y, 2, method="bab+milp").method == "milp"
    assert len(budgets) == 2


def test_a_registered_method_serves_both_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    net = small_mlp(4, 3, 3)
    x, y = point(net, 4)
    seen = []

    def undecided(query: query_mod.Query, timeout: float) -> tuple[SearchOutcome, str]:
        seen.append((tuple(query.lo.shape), timeout))
        return SearchOutcome("timeout", note="mine gave up"), "mine"

    monkeypatch.setitem(METHODS, "mine", undecided)
    r = verify_sample(net, x, y, 1, method="mine", timeout=5)
    assert (r.verdict, r.method, r.note) == ("timeout", "mine", "mine gave up")
    v = verify_vnnlib(net, robustness_property(x[0].tolist(), 1, y), method="mine", timeout=5)
    assert (v.result, v.decided_by) == ("timeout", "mine")
    assert len(seen) == 2 and all(0 < t <= 5 for _, t in seen)
    with pytest.raises(InputError, match="exists already"):
        register_method("bab", undecided)
    with pytest.raises(InputError, match="method must be one of"):
        verify_vnnlib(net, robustness_property(x[0].tolist(), 1, y), method="smt")


def test_every_counterexample_is_rechecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method that claims a counterexample which is none fails loudly in both modes."""
    net = small_mlp(5, 3, 3)
    x, y = point(net, 5)

    def liar(query: query_mod.Query, timeout: float) -> tuple[SearchOutcome, str]:
        return SearchOutcome("unsafe", counterexample=x.clone()), "liar"  # x itself is safe

    monkeypatch.setitem(METHODS, "liar", liar)
    with pytest.raises(AssertionError, match="re-check"):
        verify_sample(net, x, y, 1, method="liar")
    with pytest.raises(AssertionError, match="re-check"):
        verify_vnnlib(net, robustness_property(x[0].tolist(), 1, y), method="liar")
