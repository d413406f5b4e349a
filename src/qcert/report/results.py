"""Reading result files: verify JSON Lines, smoothing TSV (Cohen's columns), training metrics JSON.

Each reader returns a small typed record; the report module plots and tabulates them. Result files are
recognised by their content, not their name. Where a file does not say its ε, σ, path or model, the
reader takes them from the file name (``eps4``, ``sigma0.25``, ``int`` / ``float``) or the folder name.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcert.errors import InputError

VERDICTS = ("robust", "vulnerable", "timeout", "misclassified")
TSV_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time"]


@dataclass
class VerifyRun:
    """One `qcert verify --out` JSONL file."""

    path: Path
    model: str
    eps: float | None
    verdicts: list[str]
    seconds: list[float]

    @property
    def n(self) -> int:
        return len(self.verdicts)

    def count(self, verdict: str) -> int:
        return sum(v == verdict for v in self.verdicts)

    @property
    def certified_acc(self) -> float:
        return self.count("robust") / self.n if self.n else 0.0


@dataclass
class SmoothingRun:
    """One `qcert smooth certify --out` TSV file (Cohen et al.'s columns)."""

    path: Path
    model: str
    sigma: float | None
    arith: str
    radius: list[float]  # -1 / abstain rows have radius 0 and correct 0
    correct: list[int]
    predict: list[int]
    seconds: list[float]

    @property
    def n(self) -> int:
        return len(self.radius)

    def certified_acc(self, r: float) -> float:
        """Share of samples predicted correctly with certified radius ≥ r (Cohen's definition)."""
        if not self.n:
            return 0.0
        return sum(c == 1 and rad >= r for c, rad in zip(self.correct, self.radius)) / self.n

    @property
    def abstain_rate(self) -> float:
        return sum(p == -1 for p in self.predict) / self.n if self.n else 0.0


@dataclass
class TrainingRun:
    """One training `metrics.json`."""

    path: Path
    model: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def certified(self) -> dict[float, float]:
        raw = self.data.get("ibp_certified_acc") or {}
        return {float(k): float(v) for k, v in raw.items()}


def _name_number(path: Path, key: str) -> float | None:
    m = re.search(rf"{key}[-_=]?(\d+(?:\.\d+)?)", path.name)
    return float(m.group(1)) if m else None


def _model_name(path: Path) -> str:
    return path.parent.name or path.stem


def read_verify(path: Path) -> VerifyRun:
    verdicts, seconds, eps, model = [], [], None, None
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                verdict = rec["verdict"]
                secs = float(rec["seconds"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise InputError(f"{path}:{lineno}: not a verify result line ({e})") from None
            if verdict not in VERDICTS:
                raise InputError(f"{path}:{lineno}: unknown verdict {verdict!r}")
            verdicts.append(verdict)
            seconds.append(secs)
            eps = rec.get("eps", eps)
            model = rec.get("model", model)
    if eps is None:
        eps = _name_number(path, "eps")
    return VerifyRun(path, str(model or _model_name(path)), eps, verdicts, seconds)


def read_smoothing(path: Path) -> SmoothingRun:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or [c.strip() for c in rows[0]] != TSV_COLUMNS:
        raise InputError(f"{path}: expected a TSV with columns {' '.join(TSV_COLUMNS)}")
    radius, correct, predict, seconds = [], [], [], []
    for lineno, row in enumerate(rows[1:], 2):
        if not row:
            continue
        try:
            _, _, p, r, c, t = row[:6]
            predict.append(int(p))
            rad = float(r)
            radius.append(rad if math.isfinite(rad) else 0.0)
            correct.append(int(c))
            seconds.append(float(t))
        except ValueError as e:
            raise InputError(f"{path}:{lineno}: malformed row ({e})") from None
    name = path.name.lower()
    arith = "float" if "float" in name else "int"
    sidecar = path.with_suffix(path.suffix + ".json")
    sigma = _name_number(path, "sigma")
    if sidecar.exists():
        meta = json.loads(sidecar.read_text())
        sigma = meta.get("sigma", sigma)
        arith = meta.get("arith", arith)
    return SmoothingRun(path, _model_name(path), sigma, arith, radius, correct, predict, seconds)


def read_training(path: Path) -> TrainingRun:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or "clean_acc" not in data:
        raise InputError(f"{path}: not a training metrics file (no 'clean_acc')")
    label = "-".join(str(data[k]) for k in ("method", "arch", "dataset") if k in data)
    return TrainingRun(path, label or _model_name(path), data)


def read_result(path: str | Path) -> VerifyRun | SmoothingRun | TrainingRun:
    """Read any supported result file, recognised by its content."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such result file")
    head = p.read_text(errors="replace")[:4096]
    first = head.lstrip().split("\n", 1)[0]
    if first.startswith("idx\t"):
        return read_smoothing(p)
    if first.startswith("{") and '"verdict"' in first:
        return read_verify(p)
    if head.lstrip().startswith("{"):
        return read_training(p)
    raise InputError(f"{p}: not a verify JSONL, smoothing TSV or training metrics.json file")
