"""The MILP peer: a silent HiGHS (the VNN-COMP answer is stdout's first line), one deadline per
query (HiGHS runs in a child process that gets the time left and is killed when late), and
precomputed per-unit bounds (``unit_bounds``) that keep the verdicts exact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from qnets import box_points, enumerable_net, small_mlp

import qcert
import qcert.verify.milp as milp
from qcert.bounds import eps_box
from qcert.errors import InputError
from qcert.quant import QNetwork, QRequant, save_model
from qcert.verify import OutputSpec, milp_search
from qcert.verify.highs_process import ARRAYS, HIGHS_OPTIONS, HighsProcess, solve


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    src = str(Path(qcert.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_highs_banner_never_reaches_stdout(tmp_path: Path) -> None:
    """A fresh process (HiGHS prints its banner once per process, as the first instance is
    constructed): the VNN-LIB answer of the MILP is the first line of stdout."""
    net = small_mlp(3, d=3, k=3)
    save_model(net, tmp_path / "m.qnn")
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(3))
    decl += "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
    box = "".join(f"(assert (>= X_{i} 2))\n(assert (<= X_{i} 9))\n" for i in range(3))
    for prop, method in (
        ("(assert (>= Y_1 Y_0))\n", "milp"),
        ("(assert (>= Y_0 Y_2))", "bab+milp"),
    ):
        (tmp_path / "p.vnnlib").write_text(decl + box + prop)
        args = ["-m", "qcert", "verify", "m.qnn", "--vnnlib", "p.vnnlib", "--method", method]
        res = _run([*args, "--timeout", "30"], tmp_path)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[0] in ("sat", "unsat"), res.stdout
        assert "HiGHS" not in res.stdout
    # the library alone, with the solver forced to run (no interval pre-filter)
    code = (
        "import torch\nfrom qnets import small_mlp\nfrom qcert.verify import OutputSpec, milp_search\n"
        "net = small_mlp(3, d=3, k=3)\n"
        "lo, hi = torch.full((3,), 2), torch.full((3,), 9)\n"
        "out = milp_search(net, lo, hi, OutputSpec.robustness(0, 3), use_bounds=False)\n"
        "print(out.status)\n"
    )
    tests = str(Path(__file__).resolve().parents[1])
    res = _run(["-c", f"import sys; sys.path.insert(0, {tests!r})\n" + code], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout in ("safe\n", "unsafe\n"), res.stdout
    assert res.stdout.count("\n") == 1


def _tiny_milp(lower: float) -> list:
    """x0 + x1 >= lower with x in [0, 3]^2 (integer), as the child's arrays."""
    arrays = dict(
        col_lower=np.zeros(2), col_upper=np.full(2, 3.0), row_lower=np.array([lower]),
        row_upper=np.array([np.inf]), start=np.array([0, 2]), index=np.array([0, 1]),
        value=np.ones(2),
    )  # fmt: skip
    return [arrays[k] for k in ARRAYS]


def test_highs_process_answers_and_keeps_the_deadline() -> None:
    proc = HighsProcess()
    try:
        status, x = proc.solve(_tiny_milp(5.5), time.monotonic() + 60)
        assert status == "feasible" and x is not None and x.sum() >= 5.5
        assert proc.solve(_tiny_milp(6.5), time.monotonic() + 60) == ("infeasible", None)
        # the child computes HiGHS's time limit from the deadline: none left, no solve
        head = {"deadline": time.time() - 1, "options": HIGHS_OPTIONS}
        assert solve(head, _tiny_milp(5.5))[0].startswith("time limit")
    finally:
        proc.stop()
    # a child that never answers is killed at the deadline (plus a small grace), and replaced
    stuck = HighsProcess([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        t0 = time.monotonic()
        status, x = stuck.solve(_tiny_milp(1), t0 + 0.5)
        assert status.startswith("time limit") and x is None
        assert time.monotonic() - t0 < 60  # (the child would sleep 120 s)
        assert stuck.proc is not None and stuck.proc.poll() is None  # a fresh child waits
    finally:
        stuck.stop()


def test_deadline_checked_while_building() -> None:
    net = enumerable_net(5)
    x = torch.full(net.input_shape, net.input_range[0] + 2)
    lo, hi = eps_box(net, x[None], 2)
    spec = OutputSpec.robustness(0, net.num_classes)
    out = milp_search(net, lo, hi, spec, timeout=1e-9, use_bounds=False)
    assert out.status == "timeout"
    with pytest.raises(milp._OutOfTime):
        milp.encode(net, lo, hi, deadline=0.0)


def requant_inputs(net: QNetwork, pts: torch.Tensor) -> list[torch.Tensor]:
    """The exact input of every requantization layer at the points (N × units)."""
    out, q = [], net.check_input(pts)
    for layer in net.layers:
        if isinstance(layer, QRequant):
            out.append(q.reshape(q.shape[0], -1))
        q = layer.integer(q)
    return out


def interval_unit_bounds(net: QNetwork, lo: torch.Tensor, hi: torch.Tensor) -> list:
    b = net.int_bounds(lo, hi)
    return [b[i - 1] for i, m in enumerate(net.layers) if isinstance(m, QRequant)]


def _encoding_size(net: QNetwork, lo: torch.Tensor, hi: torch.Tensor, ub: list | None) -> tuple:
    model, _, _ = milp.encode(net, lo, hi, ub)
    return len(model.lower), len(model.rows), sum(r[0].size for r in model.rows)


@pytest.mark.parametrize("seed", range(16))
def test_unit_bounds_interval_same_and_exact_tighter_still_correct(seed: int) -> None:
    """Interval bounds passed as unit_bounds give the same encoding and verdicts; the tightest
    sound bounds (the exact accumulator range over the enumerated box) give no more variables
    and still the verdicts of enumeration."""
    net = enumerable_net(seed)
    g = torch.Generator().manual_seed(seed)
    lo_v, hi_v = net.input_range
    x = torch.randint(lo_v, hi_v + 1, net.input_shape, generator=g)
    lo, hi = eps_box(net, x[None], 1 + seed % 3)
    pts = box_points(lo[0], hi[0]).reshape(-1, *net.input_shape)
    cls = net.predict(pts)
    interval = interval_unit_bounds(net, lo, hi)
    exact = [(a.min(0).values, a.max(0).values) for a in requant_inputs(net, pts)]
    assert _encoding_size(net, lo, hi, interval) == _encoding_size(net, lo, hi, None)
    assert _encoding_size(net, lo, hi, exact)[0] <= _encoding_size(net, lo, hi, None)[0]
    for label in range(net.num_classes):
        spec = OutputSpec.robustness(label, net.num_classes)
        want = "unsafe" if bool((cls != label).any()) else "safe"
        for ub in (None, interval, exact):
            out = milp_search(net, lo, hi, spec, timeout=60, use_bounds=False, unit_bounds=ub)
            assert out.status == want, (seed, label, ub is exact)
            if want == "unsafe":
                assert out.counterexample is not None
                assert int(net.predict(out.counterexample[None])[0]) != label


def test_unit_bounds_checked() -> None:
    net = enumerable_net(2)
    x = torch.full(net.input_shape, net.input_range[0] + 2)
    lo, hi = eps_box(net, x[None], 1)
    spec = OutputSpec.robustness(0, net.num_classes)
    interval = interval_unit_bounds(net, lo, hi)
    with pytest.raises(InputError, match="entries"):
        milp_search(net, lo, hi, spec, use_bounds=False, unit_bounds=[*interval, interval[0]])
    a, b = interval[0]
    disjoint = [(b.reshape(-1) + 1, b.reshape(-1) + 2), *interval[1:]]
    with pytest.raises(InputError, match="contradict"):
        milp_search(net, lo, hi, spec, use_bounds=False, unit_bounds=disjoint)
