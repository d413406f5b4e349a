"""Reading result files: verify JSON Lines, smoothing TSV (Cohen's columns), training metrics JSON.

Each reader returns a small typed record; the report module plots and tabulates them. Result files are
recognised by their content, not their name. Where a file does not say its ε, σ, path or model, the
reader takes them from the file name (``eps4``, ``sigma0.25``, ``int`` / ``float``) or the folder name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcert.errors import InputError
from qcert.runs import (
    SMOOTHING,
    TSV_COLUMNS,
    VERDICTS,
    VERIFY,
    abstain_rate,
    certified_accuracy,
    read_records,
)

__all__ = ["TSV_COLUMNS", "VERDICTS", "SmoothingRun", "TrainingRun", "VerifyRun", "read_result"]


@dataclass
class _Records:
    """A dataset run's result file: its path, the model's name and its records (their schema:
    ``qcert.runs.records``); ``seconds`` reads the field named by ``TIME``."""

    TIME = "seconds"
    path: Path
    model: str
    records: list[dict[str, Any]]

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def seconds(self) -> list[float]:
        return [float(r[self.TIME]) for r in self.records]


@dataclass
class VerifyRun(_Records):
    """One `qcert verify --out` JSONL file."""

    eps: float | None = None

    @property
    def verdicts(self) -> list[str]:
        return [r["verdict"] for r in self.records]

    def count(self, verdict: str) -> int:
        return self.verdicts.count(verdict)

    @property
    def certified_acc(self) -> float:
        return self.count("robust") / self.n if self.n else 0.0


@dataclass
class SmoothingRun(_Records):
    """One `qcert smooth certify --out` TSV file (Cohen et al.'s columns); a non-finite radius
    reads as 0."""

    TIME = "time"
    sigma: float | None = None
    arith: str = "int"

    @property
    def radius(self) -> list[float]:
        return [r["radius"] for r in self.records]

    def certified_acc(self, r: float) -> float:
        """Share of samples predicted correctly with certified radius ≥ r (Cohen's definition)."""
        return certified_accuracy(self.records, r)

    @property
    def abstain_rate(self) -> float:
        return abstain_rate(self.records)


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


def model_name(model: str | Path) -> str:
    """The one name of a model in a report, from its ``.qnn`` path: the file's stem, or for
    ``qcert train``'s ``DIR/model.qnn`` (and any ``model.*``) the folder name ``DIR``."""
    p = Path(model)
    return (p.parent.name or p.stem) if p.stem == "model" else p.stem


def _model_name(path: Path) -> str:
    """The model of a result file that does not name it: the folder the file is in (where
    ``qcert train`` put the model and its metrics), else the file's stem."""
    return path.parent.name or path.stem


def read_verify(path: Path) -> VerifyRun:
    records = read_records(path, VERIFY)
    eps = next((r["eps"] for r in reversed(records) if "eps" in r), None)
    model = next((r["model"] for r in reversed(records) if "model" in r), None)
    if eps is None:
        eps = _name_number(path, "eps")
    name = model_name(model) if isinstance(model, str) and model else _model_name(path)
    return VerifyRun(path, name, records, eps)


def read_smoothing(path: Path) -> SmoothingRun:
    rows = read_records(path, SMOOTHING)
    for row in rows:
        row["radius"] = row["radius"] if math.isfinite(row["radius"]) else 0.0
    name = path.name.lower()
    arith = "float" if "float" in name else "int"
    sidecar = path.with_suffix(path.suffix + ".json")
    sigma = _name_number(path, "sigma")
    name = _model_name(path)
    if sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise InputError(f"{sidecar}: not a JSON summary ({str(e)[:100]})") from None
        if not isinstance(meta, dict):
            raise InputError(f"{sidecar}: not a JSON summary")
        sigma = meta.get("sigma", sigma)
        arith = meta.get("arith", arith)
        if isinstance(meta.get("model"), str) and meta["model"]:
            name = model_name(meta["model"])
    return SmoothingRun(path, name, rows, sigma, arith)


def read_training(path: Path) -> TrainingRun:
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{path}: not valid JSON ({str(e)[:100]})") from None
    if not isinstance(data, dict) or "clean_acc" not in data:
        raise InputError(f"{path}: not a training metrics file (no 'clean_acc')")
    return TrainingRun(path, _model_name(path), data)


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
