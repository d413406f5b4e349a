"""The records of dataset runs, one schema each, and the summaries computed from them.

* ``verify``: one JSON object per line, one line per sample (``qcert verify --out``).
* ``smoothing``: Cohen et al.'s TSV, a header line then one row per sample
  (``qcert smooth certify --out``), predict −1 = abstain.
* ``counterexample``: one JSON object per line (``qcert attack --out``).

A :class:`Kind` bundles what the store needs to know about one of them: how a line parses, how a
record is written, which field is the sample index and what a line torn by a crash can look like.
The parsers raise :class:`RecordError`, which the store turns into a one-line ``InputError`` naming
the file and line.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: the verdict words of a sample (see docs/design.md); a VNN-LIB query answers ``VNNLIB_RESULTS``
ROBUST, VULNERABLE, TIMEOUT, MISCLASSIFIED = "robust", "vulnerable", "timeout", "misclassified"
VERDICTS = (ROBUST, VULNERABLE, TIMEOUT, MISCLASSIFIED)
UNSAT, SAT = "unsat", "sat"
VNNLIB_RESULTS = (UNSAT, SAT, TIMEOUT)

TSV_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time"]
ABSTAIN = -1
#: the radii (in [0, 1] input units) at which smoothing summaries report certified accuracy
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


class RecordError(ValueError):
    """A line is not a record of the expected kind (the message says why)."""


class IncompleteRecord(RecordError):
    """A line is not a whole record: what a crash may leave of one (cut JSON, missing fields)."""


@dataclass(frozen=True)
class Kind:
    """One record schema: its name in messages, the index field, the line parser and writer, the
    TSV header (None for JSON Lines) and the pattern a line torn by a crash matches."""

    name: str
    key: str
    parse: Callable[[str], dict[str, Any]]
    format: Callable[[dict[str, Any]], str]
    header: str | None
    torn: re.Pattern[str]


def _json_object(line: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise IncompleteRecord(str(e)) from None
    except (ValueError, RecursionError) as e:  # an integer of too many digits, too deep nesting
        raise RecordError(f"{type(e).__name__}: {str(e)[:100]}") from None
    if not isinstance(rec, dict):
        raise RecordError("not a JSON object")
    return rec


def _field(rec: dict[str, Any], key: str, cast: Callable[[Any], Any]) -> Any:
    try:
        v = rec[key]
        if isinstance(v, bool) or (cast is int and isinstance(v, float)):
            raise TypeError(f"{key} is {v!r}")
        return cast(v)
    except KeyError:
        raise RecordError(repr(key)) from None
    except (TypeError, ValueError) as e:
        raise RecordError(str(e)) from None


def parse_verify(line: str) -> dict[str, Any]:
    """One ``qcert verify`` record: needs ``index``, ``verdict`` (a :data:`VERDICTS` word) and
    ``seconds``; every other key is kept as it is."""
    rec = _json_object(line)
    rec["index"] = _field(rec, "index", int)
    _field(rec, "seconds", float)
    verdict = rec.get("verdict")
    if verdict is None:
        raise RecordError("'verdict'")
    if verdict not in VERDICTS:
        raise RecordError(f"unknown verdict {verdict!r}")
    return rec


def verify_record(
    index: int,
    label: int,
    verdict: str,
    seconds: float,
    counterexample: list[int] | None,
    predicted: int | None,
    boxes: int,
    method: str,
    decided_by: str,
    eps: int,
    model_sha256: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A verify record with its keys in file order (``extra`` keys last)."""
    return {
        "index": index, "label": label, "verdict": verdict, "seconds": round(seconds, 4),
        "counterexample": counterexample, "predicted": predicted, "boxes": boxes,
        "method": method, "decided_by": decided_by, "eps": eps, "model_sha256": model_sha256,
        **(extra or {}),
    }  # fmt: skip


def parse_tsv_row(line: str) -> dict[str, Any]:
    """One row of Cohen's TSV: exactly six tab-separated numbers."""
    fields = [f.strip() for f in line.split("\t")]
    if len(fields) != len(TSV_COLUMNS):
        raise IncompleteRecord(f"{len(fields)} fields, expected {len(TSV_COLUMNS)}")
    try:
        idx, label, pred, radius, correct, secs = fields
        return {
            "idx": int(idx), "label": int(label), "predict": int(pred), "radius": float(radius),
            "correct": int(correct), "time": float(secs),
        }  # fmt: skip
    except ValueError as e:
        raise IncompleteRecord(str(e)) from None


def format_tsv_row(row: dict[str, Any]) -> str:
    return (
        f"{row['idx']}\t{row['label']}\t{row['predict']}\t{row['radius']:.6f}\t"
        f"{row['correct']}\t{row['time']:.4f}"
    )


def parse_counterexample(line: str) -> dict[str, Any]:
    """One ``qcert attack`` counterexample: ``index``, ``label``, ``predicted``, ``input``."""
    rec = _json_object(line)
    for key in ("index", "label", "predicted"):
        rec[key] = _field(rec, key, int)
    if not isinstance(rec.get("input"), list):
        raise RecordError("'input' is not a list")
    return rec


def _dumps(rec: dict[str, Any]) -> str:
    return json.dumps(rec)


def _torn_json(key: str) -> re.Pattern[str]:
    start = '{"' + key + '": '
    prefixes = "|".join(re.escape(start[:k]) for k in range(1, len(start)))
    return re.compile(f"{re.escape(start)}.*|{prefixes}", re.DOTALL)


# a torn line is what a crash left of a record's line (the store also drops NUL bytes the file
# system may have left after it): JSON records start with their index key, TSV rows are numbers
VERIFY = Kind("verify result", "index", parse_verify, _dumps, None, _torn_json("index"))
COUNTEREXAMPLES = Kind(
    "counterexample", "index", parse_counterexample, _dumps, None, _torn_json("index")
)
SMOOTHING = Kind(
    "smoothing TSV",
    "idx",
    parse_tsv_row,
    format_tsv_row,
    "\t".join(TSV_COLUMNS),
    re.compile(r"[-+.0-9a-z\t]*"),
)


def summarize_verdicts(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
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


def certified_accuracy(rows: Sequence[dict[str, Any]], radius: float) -> float:
    """Share of rows predicted correctly with a certified radius ≥ ``radius`` (Cohen's
    definition)."""
    ok = sum(r["correct"] == 1 and r["radius"] >= radius for r in rows)
    return ok / len(rows) if rows else 0.0


def abstain_rate(rows: Sequence[dict[str, Any]]) -> float:
    return sum(r["predict"] == ABSTAIN for r in rows) / len(rows) if rows else 0.0


def summarize_certify(
    rows: Sequence[dict[str, Any]], arith: str, noisy_per_second: float
) -> dict[str, Any]:
    """``n``, ``certified_acc`` keyed by radius (``"0.0"`` … ``"1.0"``), ``abstain_rate``,
    ``noisy_samples_per_second`` and ``arith``."""
    return {
        "n": len(rows),
        "certified_acc": {f"{r}": certified_accuracy(rows, r) for r in RADII},
        "abstain_rate": abstain_rate(rows),
        "noisy_samples_per_second": noisy_per_second,
        "arith": arith,
    }
