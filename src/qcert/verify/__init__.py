"""Complete verification of the integer network: batched input-splitting branch and bound with
exact QA-IBP bounds (Lechner et al., AAAI 2023, Algorithm 1), an exact MILP peer (HiGHS), and
VNN-LIB properties.

>>> from qcert.verify import verify_sample, verify_dataset
>>> res = verify_sample(net, x, label, eps=1, timeout=20.0)      # method="bab" or "milp"
>>> res.verdict, res.counterexample
>>> summary = verify_dataset(net, images, labels, eps=1, out="verify.jsonl")

See ``docs/verify.md``.
"""

from __future__ import annotations

from qcert.verify.bab import BabOptions, SearchOutcome, bab_search
from qcert.verify.bounds import NetBounds, SpecBounds
from qcert.verify.milp import milp_search
from qcert.verify.sample import (
    METHODS,
    VERDICTS,
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
    "METHODS",
    "RULES",
    "VERDICTS",
    "BabOptions",
    "NetBounds",
    "OutputSpec",
    "SearchOutcome",
    "SpecBounds",
    "Verifier",
    "VerifyResult",
    "VnnlibError",
    "VnnlibResult",
    "bab_search",
    "milp_search",
    "parse_vnnlib",
    "summarize",
    "verify_dataset",
    "verify_sample",
    "verify_vnnlib",
]
