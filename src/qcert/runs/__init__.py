"""Dataset runs, written once for every pillar: the record schemas (verify verdicts, Cohen's
smoothing TSV rows, attack counterexamples), the resumable result file with its crash rules, the
per-sample loop over this process or a Ray cluster, and the summaries.

>>> from qcert.runs import VERIFY, ResultStore, Work, compute, run_dataset
>>> store = ResultStore("v.jsonl", VERIFY, {"eps": 1, "model_sha256": model_sha256(net)})
>>> records = run_dataset(range(n), lambda todo: compute(net, work, todo), to_record, store=store)

``qcert.runs`` sits below the pillars (verify, smoothing, attack's command, report use it) and
imports only ``quant``, ``parallel`` and ``errors``. See docs/design.md.
"""

from __future__ import annotations

from qcert.runs.dataset import Work, compute, model_sha256, run_dataset
from qcert.runs.paths import check_output_file, check_output_folder, write_atomic
from qcert.runs.records import (
    ABSTAIN,
    COUNTEREXAMPLES,
    MISCLASSIFIED,
    RADII,
    ROBUST,
    SAT,
    SMOOTHING,
    TIMEOUT,
    TSV_COLUMNS,
    UNSAT,
    VERDICTS,
    VERIFY,
    VNNLIB_RESULTS,
    VULNERABLE,
    Kind,
    abstain_rate,
    certified_accuracy,
    summarize_certify,
    summarize_verdicts,
    verify_record,
)
from qcert.runs.store import ResultStore, read_records, scan

__all__ = [
    "ABSTAIN",
    "COUNTEREXAMPLES",
    "MISCLASSIFIED",
    "RADII",
    "ROBUST",
    "SAT",
    "SMOOTHING",
    "TIMEOUT",
    "TSV_COLUMNS",
    "UNSAT",
    "VERDICTS",
    "VERIFY",
    "VNNLIB_RESULTS",
    "VULNERABLE",
    "Kind",
    "ResultStore",
    "Work",
    "abstain_rate",
    "certified_accuracy",
    "check_output_file",
    "check_output_folder",
    "compute",
    "model_sha256",
    "read_records",
    "run_dataset",
    "scan",
    "summarize_certify",
    "summarize_verdicts",
    "verify_record",
    "write_atomic",
]
