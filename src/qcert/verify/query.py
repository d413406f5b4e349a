"""One verification query, decided by a named method: *can an integer input of the box
``[lo, hi]`` produce logits in the unsafe region of ``spec``?*

Dataset mode (:mod:`qcert.verify.sample`, robustness of a sample) and VNN-LIB mode
(:mod:`qcert.verify.vnnlib`, a property file) both call :func:`verify_query`, which looks the method
up in :data:`METHODS` and re-checks every counterexample with the reference executor. The methods:

* ``linear-bab``: linear-relaxation bounds and branch and bound over hidden units' integer values,
  with input splitting where it is left (:func:`~qcert.verify.lbab.linear_bab_search`);
* ``bab``: the complete input-splitting branch and bound (:func:`~qcert.verify.bab.bab_search`);
* ``milp``: the HiGHS MILP peer (:func:`~qcert.verify.milp.milp_search`);
* ``bab+milp``: branch and bound for :data:`PORTFOLIO_BAB_SHARE` of the time, then the MILP on a
  query still open.

A method is a function ``(query: Query, timeout: float) -> (SearchOutcome, decided_by)`` where
``decided_by`` names what decided; :func:`register_method` adds one.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from qcert.attack import FakeForward
from qcert.errors import InputError
from qcert.quant.network import QNetwork
from qcert.verify.bab import SAFE, UNSAFE, BabOptions, SearchOutcome, bab_search
from qcert.verify.bounds import SpecBounds
from qcert.verify.lbab import LinearBab, linear_bab_search
from qcert.verify.linear import LINEAR_LAYERS
from qcert.verify.milp import milp_search
from qcert.verify.spec import OutputSpec

#: share of the timeout that ``bab+milp`` gives branch and bound before it hands the query to MILP
PORTFOLIO_BAB_SHARE = 0.3


@dataclass
class Query:
    """What a method gets: the network, the integer box (``lo``, ``hi``, 1×input_shape), the
    specification, and what the caller may have prebuilt for them (``bounds``, ``fake``), the
    branch-and-bound ``options`` and a start point ``x0`` for the attacks."""

    net: QNetwork
    lo: torch.Tensor
    hi: torch.Tensor
    spec: OutputSpec
    options: BabOptions | None = None
    x0: torch.Tensor | None = None
    bounds: SpecBounds | None = None
    fake: FakeForward | None = None


Method = Callable[[Query, float], tuple[SearchOutcome, str]]


@dataclass
class QueryResult:
    """What a query decided: ``outcome`` (status ``safe`` / ``unsafe`` / ``timeout``, and for
    ``unsafe`` the counterexample, re-checked), ``decided_by`` (the method that decided) and the
    ``seconds``."""

    outcome: SearchOutcome
    decided_by: str
    seconds: float

    @property
    def proven(self) -> bool:
        """No integer input of the box reaches the unsafe region."""
        return self.outcome.status == SAFE

    @property
    def counterexample(self) -> torch.Tensor | None:
        """For an ``unsafe`` outcome, the integer input (1×input_shape) that reaches it."""
        return self.outcome.counterexample if self.outcome.status == UNSAFE else None

    @property
    def work(self) -> int:
        """Boxes bounded (branch and bound) or MILPs solved (MILP)."""
        if self.decided_by == "milp":
            return int(self.outcome.stats.get("solves", 0))
        return self.outcome.boxes


def _bab(q: Query, timeout: float) -> tuple[SearchOutcome, str]:
    outcome = bab_search(
        q.net, q.lo, q.hi, q.spec, timeout=timeout, options=q.options, x0=q.x0, bounds=q.bounds,
        fake=q.fake,
    )  # fmt: skip
    return outcome, "bab"


#: one linear-bound searcher per network with a copy of the parameters it was built from: it is
#: rebuilt whenever they differ (the searcher holds the weights as they were)
_SEARCHERS: weakref.WeakKeyDictionary[QNetwork, tuple[list[torch.Tensor], LinearBab]] = (
    weakref.WeakKeyDictionary()
)


def _searcher(net: QNetwork) -> LinearBab:
    params = [p.detach() for p in net.parameters()]
    hit = _SEARCHERS.get(net)
    same = hit is not None and len(hit[0]) == len(params)
    if same and hit is not None:
        same = all(torch.equal(a, b) for a, b in zip(hit[0], params))
    if not same or hit is None:
        hit = ([p.clone() for p in params], LinearBab(net))
        _SEARCHERS[net] = hit
    return hit[1]


def linear_supported(net: QNetwork) -> bool:
    """True when the linear bounds (and the MILP) encode every layer of ``net``."""
    return all(isinstance(layer, LINEAR_LAYERS) for layer in net.layers)


def _require_linear(net: QNetwork, method: str) -> None:
    if not linear_supported(net):
        kinds = sorted({layer.kind for layer in net.layers if not isinstance(layer, LINEAR_LAYERS)})
        raise InputError(
            f"method {method!r} does not support the layers {', '.join(kinds)}; "
            "use --method bab (exact input-splitting branch and bound)"
        )


def _linear_bab(q: Query, timeout: float) -> tuple[SearchOutcome, str]:
    if not linear_supported(q.net):
        # documented fallback (docs/verify.md): exact interval bounds with input splits
        return _bab(q, timeout)
    seed = 0 if q.options is None else q.options.seed
    search = _searcher(q.net)
    if search.opt.seed != seed:
        search = LinearBab(q.net, replace(search.opt, seed=seed))
    outcome = linear_bab_search(
        q.net, q.lo, q.hi, q.spec, timeout=timeout, x0=q.x0, bounds=q.bounds, fake=q.fake,
        searcher=search,
    )  # fmt: skip
    return outcome, "linear-bab"


def _milp(q: Query, timeout: float) -> tuple[SearchOutcome, str]:
    _require_linear(q.net, "milp")
    # big-M constants and stable units from the linear bounds of the box, not intervals alone
    lo, hi = q.lo.reshape(1, -1), q.hi.reshape(1, -1)
    unit_bounds = _searcher(q.net).lb.refine(lo, hi) if bool((lo <= hi).all()) else None
    outcome = milp_search(
        q.net, q.lo, q.hi, q.spec, timeout=timeout, bounds=q.bounds, unit_bounds=unit_bounds
    )
    return outcome, "milp"


def _portfolio(q: Query, timeout: float) -> tuple[SearchOutcome, str]:
    _require_linear(q.net, "bab+milp")
    t0 = time.monotonic()
    outcome, decided_by = _bab(q, timeout * PORTFOLIO_BAB_SHARE)
    if outcome.status != "timeout":
        return outcome, decided_by
    # what branch and bound left open goes to the exact MILP
    return _milp(q, max(1e-3, timeout - (time.monotonic() - t0)))


#: the method used when none is named: exact, and the strongest on networks of every kind
DEFAULT_METHOD = "linear-bab"

#: the verification methods by name (``--method``)
METHODS: dict[str, Method] = {
    "linear-bab": _linear_bab,
    "bab": _bab,
    "milp": _milp,
    "bab+milp": _portfolio,
}


def register_method(name: str, method: Method, *, replace: bool = False) -> None:
    """Make ``method`` available as ``name`` to :func:`verify_query` (and so to dataset and
    VNN-LIB mode and ``qcert verify --method``)."""
    if name in METHODS and not replace:
        raise InputError(f"a verification method {name!r} exists already")
    METHODS[name] = method


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


def verify_query(
    net: QNetwork,
    lo: torch.Tensor,
    hi: torch.Tensor,
    spec: OutputSpec,
    *,
    method: str = DEFAULT_METHOD,
    timeout: float = 20.0,
    options: BabOptions | None = None,
    x0: torch.Tensor | None = None,
    bounds: SpecBounds | None = None,
    fake: FakeForward | None = None,
) -> QueryResult:
    """Decide whether an integer input of ``[lo, hi]`` reaches the unsafe region of ``spec``, with
    ``method`` within ``timeout`` seconds. A counterexample is returned only after the reference
    executor confirms it: inside the box and in the unsafe region."""
    run = METHODS[check_method(method)]
    timeout = check_timeout(timeout)
    t0 = time.monotonic()
    query = Query(net, lo, hi, spec, options, x0, bounds, fake)
    outcome, decided_by = run(query, timeout)
    if outcome.status == UNSAFE:
        assert outcome.counterexample is not None
        x = outcome.counterexample.reshape(1, *net.input_shape)
        inside = bool(((x >= lo.reshape(x.shape)) & (x <= hi.reshape(x.shape))).all())
        if not inside or not bool(spec.holds(net.integer_forward(x))[0]):
            raise AssertionError("a counterexample failed the final re-check")
        outcome.counterexample = x
    return QueryResult(outcome, decided_by, time.monotonic() - t0)
