"""Complete verification of the integer network: batched input-splitting branch and bound with
exact QA-IBP bounds (Lechner et al., AAAI 2023, Algorithm 1), an exact MILP peer (HiGHS), and
VNN-LIB properties.

>>> from qcert.verify import verify_sample, verify_dataset
>>> res = verify_sample(net, x, label, eps=1, timeout=20.0)      # method="linear-bab" (default), "bab", "milp"
>>> res.verdict, res.counterexample
>>> summary = verify_dataset(net, images, labels, eps=1, out="verify.jsonl")
>>> q = verify_query(net, lo, hi, spec, method="bab+milp")       # any box and output spec

Dataset mode (``qcert.verify.sample``) and VNN-LIB mode (``qcert.verify.vnnlib``) both decide their
queries with ``verify_query`` (``qcert.verify.query``), which dispatches on the method name
(``METHODS``; ``register_method`` adds one).

See ``docs/verify.md``.
"""

from __future__ import annotations

from qcert.runs import VERDICTS
from qcert.verify.bab import BabOptions, SearchOutcome, bab_search
from qcert.verify.bounds import NetBounds, SpecBounds
from qcert.verify.lbab import LinearBab, LinearBabOptions, linear_bab_search
from qcert.verify.linear import LinearBounds
from qcert.verify.milp import milp_search
from qcert.verify.query import (
    DEFAULT_METHOD,
    METHODS,
    QueryResult,
    register_method,
    verify_query,
)
from qcert.verify.sample import (
    Verifier,
    VerifyResult,
    summarize,
    verify_dataset,
    verify_sample,
)
from qcert.verify.spec import OutputSpec
from qcert.verify.split import RULES
from qcert.verify.vnnlib import VnnlibError, VnnlibResult, parse_vnnlib, verify_vnnlib

__all__ = [
    "DEFAULT_METHOD",
    "LinearBab",
    "LinearBabOptions",
    "LinearBounds",
    "linear_bab_search",
    "METHODS",
    "RULES",
    "VERDICTS",
    "BabOptions",
    "NetBounds",
    "OutputSpec",
    "QueryResult",
    "SearchOutcome",
    "SpecBounds",
    "Verifier",
    "VerifyResult",
    "VnnlibError",
    "VnnlibResult",
    "bab_search",
    "milp_search",
    "parse_vnnlib",
    "register_method",
    "summarize",
    "verify_dataset",
    "verify_sample",
    "verify_query",
    "verify_vnnlib",
]
