"""Robustness verification of samples: ``verify_sample`` and the resumable ``verify_dataset``.

For a sample ``x`` with label ``c`` and radius ``ε`` (integer input steps, clipped to the input
range) the verdict is ``robust`` (a proof: every integer input of the ε-box is classified ``c``,
ties to the smallest index), ``vulnerable`` (with a counterexample re-checked by ``net.predict``),
``timeout``, or ``misclassified`` (``x`` itself is not classified ``c``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qcert.bounds import eps_box
from qcert.errors import InputError
from qcert.quant.fake_forward import FakeForward
from qcert.quant.inputs import check_eps, check_labels
from qcert.quant.network import QNetwork
from qcert.runs import (
    MISCLASSIFIED,
    ROBUST,
    TIMEOUT,
    VERIFY,
    VULNERABLE,
    ResultStore,
    Work,
    compute,
    model_sha256,
    run_dataset,
    summarize_verdicts,
    verify_record,
)
from qcert.verify.bab import BabOptions
from qcert.verify.bounds import NetBounds, SpecBounds
from qcert.verify.query import (
    DEFAULT_METHOD,
    QueryResult,
    check_method,
    check_timeout,
    verify_query,
)
from qcert.verify.spec import OutputSpec

#: the summary of a verify run: counts per verdict, certified_acc, median_seconds
summarize = summarize_verdicts


@dataclass
class VerifyResult:
    """The verdict on one sample.

    Attributes:
        verdict: ``robust``, ``vulnerable``, ``timeout`` or ``misclassified``.
        seconds: wall-clock time of the decision.
        counterexample: flattened integer input (list of ints) for ``vulnerable`` and
            ``misclassified`` (then ``x`` itself), else None; re-checked by ``net.predict``.
        boxes_explored: boxes bounded (BaB) or MILPs solved (MILP).
        predicted: the class of the counterexample (or of ``x``) by the reference executor.
        method: the method that decided (``bab`` or ``milp``).
        note: how the verdict was reached (or why it timed out).
    """

    verdict: str
    seconds: float
    counterexample: list[int] | None
    boxes_explored: int
    label: int
    predicted: int | None = None
    method: str = DEFAULT_METHOD
    note: str = ""
    stats: dict[str, float] = field(default_factory=dict)


def _options(options: BabOptions | None, split: str | None, seed: int) -> BabOptions:
    opt = options or BabOptions(seed=seed)
    if split is not None:
        opt = BabOptions(**{**opt.__dict__, "split": split})
    return opt


class Verifier:
    """Robustness queries on one network, reusing what depends on the network only (the bound
    steps, the per-label fused bounds, the fake-quant forward). Do not change the network's
    weights while a Verifier of it is in use.

    Args: as :func:`verify_sample`.
    """

    def __init__(
        self,
        net: QNetwork,
        *,
        method: str = DEFAULT_METHOD,
        split: str | None = None,
        options: BabOptions | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if torch.device(device).type != "cpu":
            raise InputError(f"the verifier runs on the CPU; device {device!r} is not supported")
        self.net = net
        self.method = check_method(method)
        self.options = _options(options, split, seed)
        self._nb: NetBounds | None = None
        self._fake: FakeForward | None = None
        self._specs: dict[int, tuple[OutputSpec, SpecBounds]] = {}

    def _spec(self, label: int) -> tuple[OutputSpec, SpecBounds]:
        if label not in self._specs:
            if self._nb is None:
                self._nb = NetBounds(self.net, self.options.arith_path)
            spec = OutputSpec.robustness(label, self.net.num_classes)
            self._specs[label] = (spec, SpecBounds(self._nb, spec))
        return self._specs[label]

    def sample(self, x: torch.Tensor, label: int, eps: int, timeout: float = 20.0) -> VerifyResult:
        """The verdict on one sample (see :func:`verify_sample`)."""
        net = self.net
        timeout = check_timeout(timeout)
        eps = check_eps(eps)
        t0 = time.monotonic()
        x = net.check_input(torch.as_tensor(x).reshape(1, *net.input_shape))
        y = int(check_labels(net, torch.as_tensor(label).reshape(1), 1)[0])
        pred = int(net.predict(x)[0])
        if pred != y:
            flat = [int(v) for v in x.reshape(-1).tolist()]
            note = "the clean input is misclassified"
            return VerifyResult(
                MISCLASSIFIED, time.monotonic() - t0, flat, 0, y, pred, self.method, note
            )
        lo, hi = eps_box(net, x, eps)
        spec, bounds = self._spec(y)
        if self._fake is None and self.method != "milp":
            self._fake = FakeForward(net)
        remaining = max(1e-3, timeout - (time.monotonic() - t0))
        res = verify_query(
            net, lo, hi, spec, method=self.method, timeout=remaining, options=self.options, x0=x,
            bounds=bounds, fake=self._fake,
        )  # fmt: skip
        return _result(net, y, res, time.monotonic() - t0)


def verify_sample(
    net: QNetwork,
    x: torch.Tensor,
    label: int,
    eps: int,
    *,
    timeout: float = 20.0,
    method: str = DEFAULT_METHOD,
    split: str | None = None,
    options: BabOptions | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> VerifyResult:
    """Decide L∞ robustness of ``net`` at the integer input ``x`` (input_shape or 1×input_shape)
    with label ``label`` and radius ``eps`` input steps.

    ``method="linear-bab"`` (the default): linear bounds and unit splitting (exact; see
    :func:`~qcert.verify.lbab.linear_bab_search`); ``"bab"``: the input-splitting branch and bound
    (exact; see :func:`bab_search`); ``"bab+milp"``:
    branch and bound for 30 % of the timeout, then the MILP on a query still open; ``"milp"``: the
    HiGHS MILP peer. ``split`` overrides ``options.split`` (see ``qcert.verify.split``). A
    ``robust`` verdict is a proof; a ``vulnerable`` one carries a counterexample confirmed by
    ``net.predict``. Runs on the CPU (``device`` other than CPU is refused).
    """
    verifier = Verifier(net, method=method, split=split, options=options, seed=seed, device=device)
    return verifier.sample(x, label, eps, timeout)


def _result(net: QNetwork, y: int, res: QueryResult, seconds: float) -> VerifyResult:
    """The sample's verdict from the query's outcome (the counterexample is already re-checked
    inside the ε-box; here its class is confirmed to differ from the label)."""
    o = res.outcome
    parts = (res.work, y)
    if res.proven:
        return VerifyResult(ROBUST, seconds, None, *parts, y, res.decided_by, o.note, o.stats)
    cex = res.counterexample
    if cex is not None:
        pred = int(net.predict(cex)[0])
        if pred == y:
            raise AssertionError("a counterexample failed the final re-check")
        flat = [int(v) for v in cex.reshape(-1).tolist()]
        return VerifyResult(
            VULNERABLE, seconds, flat, *parts, pred, res.decided_by, o.note, o.stats
        )
    return VerifyResult(TIMEOUT, seconds, None, *parts, None, res.decided_by, o.note, o.stats)


# ---------------------------------------------------------------------------- datasets
def _verify_step(verifier: Verifier, data: dict[str, Any], i: int) -> VerifyResult:
    """One sample of a dataset run (a module-level function: Ray sends it by reference)."""
    return verifier.sample(data["x"][i], int(data["y"][i]), data["eps"], data["timeout"])


def verify_dataset(
    net: QNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: int,
    *,
    out: str | Path | None = None,
    start: int = 0,
    timeout: float = 20.0,
    method: str = DEFAULT_METHOD,
    split: str | None = None,
    options: BabOptions | None = None,
    seed: int = 0,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    extra: dict[str, Any] | None = None,
    ray: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Verify samples ``start..N-1`` of ``images`` one by one (or spread over a Ray cluster with
    ``ray=True``: ``ray_address``, or a local one with ``workers`` CPUs; the verdicts are those of
    a single-process run, written to ``out`` as they arrive).

    Each decision is appended to ``out`` (JSON Lines: ``index``, ``label``, ``verdict``,
    ``seconds``, ``counterexample``, ``predicted``, ``boxes``, ``method``, ``decided_by``, ``eps``,
    ``model_sha256`` and the ``extra`` keys) as soon as it is made and synced to disk; indices
    already in ``out`` are skipped (resume; the rules are those of :mod:`qcert.runs.store`: a file
    of another kind, ε or model is refused). ``on_result(record)`` is called for every record of
    ``start..N-1``, old ones included. Returns the summary: ``n``, ``robust``, ``vulnerable``,
    ``timeout``, ``misclassified``, ``certified_acc``, ``median_seconds`` over samples
    ``start..N-1`` (records of other samples in ``out`` are not counted).
    """
    eps = check_eps(eps)
    method = check_method(method)
    timeout = check_timeout(timeout)
    x = net.check_input(images)
    y = check_labels(net, labels, x.shape[0])
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise InputError(f"start must be a non-negative integer, got {start!r}")
    if start >= x.shape[0]:
        raise InputError(f"start {start} is past the {x.shape[0]} samples")
    params: dict[str, Any] = {"method": method, "split": split, "options": options, "seed": seed}
    verifier = Verifier(net, **params)
    work = Work(Verifier, params, _verify_step, {"x": x, "y": y, "eps": eps, "timeout": timeout})
    sha = model_sha256(net)
    store = None if out is None else ResultStore(out, VERIFY, {"eps": eps, "model_sha256": sha})

    def record(i: int, res: VerifyResult) -> dict[str, Any]:
        return verify_record(
            i, res.label, res.verdict, res.seconds, res.counterexample, res.predicted,
            res.boxes_explored, method, res.method, eps, sha, extra,
        )  # fmt: skip

    def results(todo: list[int]) -> Iterable[tuple[int, Any]]:
        return compute(
            net, work, todo, solver=verifier, ray=ray, ray_address=ray_address, workers=workers
        )

    records = run_dataset(range(start, len(x)), results, record, store=store, on_record=on_result)
    return summarize_verdicts(records)
