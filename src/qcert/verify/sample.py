"""Robustness verification of samples: ``verify_sample`` and the resumable ``verify_dataset``.

For a sample ``x`` with label ``c`` and radius ``ε`` (integer input steps, clipped to the input
range) the verdict is ``robust`` (a proof: every integer input of the ε-box is classified ``c``,
ties to the smallest index), ``vulnerable`` (with a counterexample re-checked by ``net.predict``),
``timeout``, or ``misclassified`` (``x`` itself is not classified ``c``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qcert.bounds import eps_box
from qcert.errors import InputError
from qcert.quant.fake_forward import FakeForward
from qcert.quant.inputs import check_eps, check_labels
from qcert.quant.network import QNetwork
from qcert.verify.bab import SAFE, UNSAFE, BabOptions, SearchOutcome, bab_search
from qcert.verify.bounds import NetBounds, SpecBounds
from qcert.verify.milp import milp_search
from qcert.verify.spec import OutputSpec

ROBUST, VULNERABLE, TIMEOUT, MISCLASSIFIED = "robust", "vulnerable", "timeout", "misclassified"
VERDICTS = (ROBUST, VULNERABLE, TIMEOUT, MISCLASSIFIED)
METHODS = ("bab", "milp", "bab+milp")
#: share of the timeout that ``bab+milp`` gives branch and bound before it hands the query to MILP
PORTFOLIO_BAB_SHARE = 0.3


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
        method: ``bab`` or ``milp``.
        note: how the verdict was reached (or why it timed out).
    """

    verdict: str
    seconds: float
    counterexample: list[int] | None
    boxes_explored: int
    label: int
    predicted: int | None = None
    method: str = "bab"
    note: str = ""
    stats: dict[str, float] = field(default_factory=dict)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if timeout == float("inf"):
        raise InputError("timeout must be finite")
    return float(timeout)


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
        method: str = "bab",
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
            return VerifyResult(
                MISCLASSIFIED,
                time.monotonic() - t0,
                [int(v) for v in x.reshape(-1).tolist()],
                0,
                y,
                pred,
                self.method,
                "the clean input is misclassified",
            )
        lo, hi = eps_box(net, x, eps)
        spec, bounds = self._spec(y)
        remaining = max(1e-3, timeout - (time.monotonic() - t0))
        if self.method in ("bab", "bab+milp"):
            if self._fake is None:
                self._fake = FakeForward(net)
            share = PORTFOLIO_BAB_SHARE if self.method == "bab+milp" else 1.0
            decided_by = "bab"
            outcome = bab_search(
                net,
                lo,
                hi,
                spec,
                timeout=remaining * share,
                options=self.options,
                x0=x,
                bounds=bounds,
                fake=self._fake,
            )
            if outcome.status == "timeout" and self.method == "bab+milp":
                # the portfolio: what branch and bound left open goes to the exact MILP
                remaining = max(1e-3, timeout - (time.monotonic() - t0))
                outcome = milp_search(net, lo, hi, spec, timeout=remaining, bounds=bounds)
                decided_by = "milp"
        else:
            outcome = milp_search(net, lo, hi, spec, timeout=remaining, bounds=bounds)
            decided_by = "milp"
        # the method that produced the verdict: a MILP "robust" rests on HiGHS's floating point
        return _result(net, x, y, eps, outcome, decided_by, time.monotonic() - t0)


def verify_sample(
    net: QNetwork,
    x: torch.Tensor,
    label: int,
    eps: int,
    *,
    timeout: float = 20.0,
    method: str = "bab",
    split: str | None = None,
    options: BabOptions | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> VerifyResult:
    """Decide L∞ robustness of ``net`` at the integer input ``x`` (input_shape or 1×input_shape)
    with label ``label`` and radius ``eps`` input steps.

    ``method="bab"``: the complete branch and bound (exact; see :func:`bab_search`); ``"bab+milp"``:
    branch and bound for 30 % of the timeout, then the MILP on a query still open; ``"milp"``: the
    HiGHS MILP peer. ``split`` overrides ``options.split`` (see ``qcert.verify.split``). A
    ``robust`` verdict is a proof; a ``vulnerable`` one carries a counterexample confirmed by
    ``net.predict``. Runs on the CPU (``device`` other than CPU is refused).
    """
    verifier = Verifier(net, method=method, split=split, options=options, seed=seed, device=device)
    return verifier.sample(x, label, eps, timeout)


def _result(
    net: QNetwork,
    x: torch.Tensor,
    y: int,
    eps: int,
    outcome: SearchOutcome,
    method: str,
    seconds: float,
) -> VerifyResult:
    boxes = outcome.boxes if method == "bab" else int(outcome.stats.get("solves", 0))
    if outcome.status == SAFE:
        return VerifyResult(ROBUST, seconds, None, boxes, y, y, method, outcome.note, outcome.stats)
    if outcome.status == UNSAFE:
        assert outcome.counterexample is not None
        cex = outcome.counterexample.reshape(1, *net.input_shape)
        # the final re-check: inside the clipped ε-box, and misclassified by the reference executor
        lo_v, hi_v = net.input_range
        inside = int((cex - x).abs().max()) <= eps and int(cex.min()) >= lo_v
        inside = inside and int(cex.max()) <= hi_v
        pred = int(net.predict(cex)[0])
        if not inside or pred == y:
            raise AssertionError("a counterexample failed the final re-check")
        return VerifyResult(
            VULNERABLE,
            seconds,
            [int(v) for v in cex.reshape(-1).tolist()],
            boxes,
            y,
            pred,
            method,
            outcome.note,
            outcome.stats,
        )
    return VerifyResult(TIMEOUT, seconds, None, boxes, y, None, method, outcome.note, outcome.stats)


# ---------------------------------------------------------------------------- datasets
def _read_done(path: Path, eps: int) -> dict[int, dict[str, Any]]:
    """Records already in a JSONL result file, by index. A torn last line (an interrupted write)
    is cut off; any other malformed line is an error."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)
        raw = raw[:cut]
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            idx = int(rec["index"])
            verdict = rec["verdict"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}:{lineno}: not a verify result line ({e})") from None
        if verdict not in VERDICTS:
            raise InputError(f"{path}:{lineno}: unknown verdict {verdict!r}")
        if "eps" in rec and rec["eps"] != eps:
            raise InputError(
                f"{path} holds results for eps={rec['eps']}, not {eps}; use another --out file"
            )
        done[idx] = rec
    return done


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per verdict, certified accuracy (robust / n) and the median time per sample."""
    n = len(records)
    counts = {v: sum(r["verdict"] == v for r in records) for v in VERDICTS}
    secs = [float(r["seconds"]) for r in records]
    return {
        "n": n,
        **counts,
        "certified_acc": counts[ROBUST] / n if n else 0.0,
        "median_seconds": statistics.median(secs) if secs else 0.0,
    }


_WORKER_VERIFIER: dict[tuple, Verifier] = {}


def _verify_one(payload: dict[str, Any], i: int) -> VerifyResult:
    """One sample on a Ray worker; the Verifier is rebuilt from the model bytes once per process."""
    key = (hash(payload["model"]), payload["method"], payload["split"], payload["seed"])
    if key not in _WORKER_VERIFIER:
        from qcert.quant.io import model_from_bytes

        _WORKER_VERIFIER.clear()
        net = model_from_bytes(payload["model"])
        _WORKER_VERIFIER[key] = Verifier(
            net,
            method=payload["method"],
            split=payload["split"],
            options=payload["options"],
            seed=payload["seed"],
        )
    v = _WORKER_VERIFIER[key]
    return v.sample(payload["x"][i], int(payload["y"][i]), payload["eps"], payload["timeout"])


def verify_dataset(
    net: QNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: int,
    *,
    out: str | Path | None = None,
    start: int = 0,
    timeout: float = 20.0,
    method: str = "bab",
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
    ``seconds``, ``counterexample``, ``predicted``, ``boxes``, ``method``, ``eps`` and the
    ``extra`` keys) as soon as it is made and flushed to disk; indices already in ``out`` are
    skipped (resume). ``on_result(record)`` is called for every record, old ones included.
    Returns the summary: ``n``, ``robust``, ``vulnerable``, ``timeout``, ``misclassified``,
    ``certified_acc``, ``median_seconds`` over samples ``start..N-1``.
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
    verifier = Verifier(net, method=method, split=split, options=options, seed=seed)
    path = Path(out) if out is not None else None
    done = _read_done(path, eps) if path is not None else {}
    todo = [i for i in range(start, x.shape[0]) if i not in done]
    if ray:
        from qcert.parallel import ray_map
        from qcert.quant.io import model_to_bytes

        payload = {
            "model": model_to_bytes(net), "x": x, "y": y, "eps": eps, "timeout": timeout,
            "method": method, "split": split, "options": options, "seed": seed,
        }  # fmt: skip
        results = ray_map(_verify_one, payload, todo, address=ray_address, workers=workers)
    else:
        results = ((i, verifier.sample(x[i], int(y[i]), eps, timeout)) for i in todo)
    records: list[dict[str, Any]] = [done[i] for i in sorted(done) if i >= start]
    if on_result is not None:
        for rec in records:
            on_result(rec)
    f = path.open("a") if path is not None else None
    try:
        for i, res in results:
            rec = {
                "index": i,
                "label": res.label,
                "verdict": res.verdict,
                "seconds": round(res.seconds, 4),
                "counterexample": res.counterexample,
                "predicted": res.predicted,
                "boxes": res.boxes_explored,
                "method": method,
                "decided_by": res.method,
                "eps": eps,
                **(extra or {}),
            }
            if f is not None:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())
            records.append(rec)
            if on_result is not None:
                on_result(rec)
    finally:
        if f is not None:
            f.close()
    records.sort(key=lambda r: int(r["index"]))
    return summarize(records)
