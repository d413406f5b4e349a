"""Certify or predict a dataset with a smoothed classifier, writing Cohen et al.'s TSV row by row.

The TSV has the columns ``idx label predict radius correct time`` (predict −1 = abstain). Rows are
flushed as each sample finishes; a rerun with the same output file skips the indices already there, so
an interrupted run resumes where it stopped and never loses finished rows.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from qcert.errors import InputError
from qcert.quant import QNetwork
from qcert.smoothing.smooth import ABSTAIN, make_smoothing
from qcert.smoothing.stats import _check_alpha

COLUMNS = ["idx", "label", "predict", "radius", "correct", "time"]
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of an existing smoothing TSV (empty list when the file does not exist)."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return []
    with open(p, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header != COLUMNS:
            raise InputError(f"{p}: not a smoothing TSV (expected columns {' '.join(COLUMNS)})")
        rows = []
        for line in reader:
            if len(line) != len(COLUMNS):
                continue  # a row cut short by an interruption: recomputed on resume
            idx, label, pred, radius, correct, secs = line
            rows.append(
                {
                    "idx": int(idx),
                    "label": int(label),
                    "predict": int(pred),
                    "radius": float(radius),
                    "correct": int(correct),
                    "time": float(secs),
                }
            )
    return rows


def _drop_partial_line(path: Path) -> None:
    """Cut a last line left unfinished by an interruption, so appended rows start on a new line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def summarize(rows: Sequence[dict[str, Any]], arith: str, noisy_per_second: float) -> dict:
    n = len(rows)
    acc = {
        f"{r}": (sum(row["correct"] == 1 and row["radius"] >= r for row in rows) / n if n else 0.0)
        for r in RADII
    }
    return {
        "n": n,
        "certified_acc": acc,
        "abstain_rate": (sum(row["predict"] == ABSTAIN for row in rows) / n if n else 0.0),
        "noisy_samples_per_second": noisy_per_second,
        "arith": arith,
    }


def _indices(total: int, skip: int, n_samples: int | None) -> list[int]:
    if skip < 1:
        raise InputError(f"skip must be ≥ 1, got {skip}")
    idx = list(range(0, total, skip))
    return idx[:n_samples] if n_samples is not None else idx


_WORKER_CACHE: dict[tuple, Any] = {}


def _smoother_for(payload: dict[str, Any]):
    """A smoothed classifier rebuilt from the payload's model bytes (cached per worker process)."""
    key: tuple[Any, ...] = (
        hash(payload["model"]),
        payload["sigma"],
        payload["arith"],
        payload["batch"],
    )
    key += (payload["executor"],)
    if key not in _WORKER_CACHE:
        from qcert.quant.io import model_from_bytes

        _WORKER_CACHE.clear()
        net = model_from_bytes(payload["model"])
        _WORKER_CACHE[key] = make_smoothing(
            net, payload["sigma"], payload["arith"], payload["batch"], payload["executor"]
        )
    return _WORKER_CACHE[key]


def _certify_one(payload: dict[str, Any], i: int):
    """One CERTIFY on a Ray worker (a module-level function: Ray ships it by reference)."""
    smoother = _smoother_for(payload)
    return smoother.certify(
        payload["images"][i], payload["n0"], payload["n"], payload["alpha"], payload["seed"], i
    )


def certify_dataset(
    net: QNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    *,
    n: int = 100_000,
    n0: int = 100,
    alpha: float = 0.001,
    arith: str = "int",
    batch: int = 1000,
    skip: int = 1,
    n_samples: int | None = None,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    executor: str = "int8",
    ray: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """CERTIFY every ``skip``-th sample (at most ``n_samples``), appending rows to ``out``.

    With ``ray=True`` the samples are spread over a Ray cluster (``ray_address``, or a local one
    with ``workers`` CPUs); the rows are the same as in one process (noise is seeded per sample),
    written as they arrive. Returns the summary: ``certified_acc`` keyed by radius ("0.0" …
    "1.0"), ``abstain_rate``, ``noisy_samples_per_second`` (of this run's new rows, per worker)
    and ``arith``.
    """
    _check_alpha(alpha)
    if n < 1 or n0 < 1:
        raise InputError(f"n and n0 must be ≥ 1, got n={n}, n0={n0}")
    kw = {"logits_fn": logits_fn} if (arith == "int" and logits_fn is not None) else {}
    smoother = make_smoothing(net, sigma, arith, batch, executor, **kw)
    rows = read_rows(out) if out is not None else []
    done = {row["idx"] for row in rows}
    todo = [i for i in _indices(images.shape[0], skip, n_samples) if i not in done]
    if ray:
        from qcert.parallel import ray_map
        from qcert.quant.io import model_to_bytes

        payload = {
            "model": model_to_bytes(net), "images": images, "sigma": sigma, "arith": arith,
            "batch": batch, "n0": n0, "n": n, "alpha": alpha, "seed": seed, "executor": executor,
        }  # fmt: skip
        results = ray_map(_certify_one, payload, todo, address=ray_address, workers=workers)
    else:
        results = ((i, smoother.certify(images[i], n0, n, alpha, seed=seed, idx=i)) for i in todo)
    f = None
    if out is not None:
        _drop_partial_line(Path(out))
        new = not Path(out).exists() or Path(out).stat().st_size == 0
        f = open(out, "a", newline="")  # noqa: SIM115 - closed in finally
        if new:
            f.write("\t".join(COLUMNS) + "\n")
            f.flush()
    noisy, busy = 0, 0.0
    try:
        for i, res in results:
            y = int(labels[i])
            noisy += res.noisy_samples
            busy += res.seconds
            row = {
                "idx": i,
                "label": y,
                "predict": res.predict,
                "radius": res.radius,
                "correct": int(res.predict == y),
                "time": res.seconds,
            }
            rows.append(row)
            if f is not None:
                f.write(
                    f"{i}\t{y}\t{res.predict}\t{res.radius:.6f}\t{row['correct']}\t"
                    f"{res.seconds:.4f}\n"
                )
                f.flush()
            if on_row is not None:
                on_row(row)
    finally:
        if f is not None:
            f.close()
    rows.sort(key=lambda r: r["idx"])
    return summarize(rows, smoother.arith, noisy / busy if busy else 0.0)


def predict_dataset(
    net: QNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    *,
    n: int = 10_000,
    alpha: float = 0.001,
    arith: str = "int",
    batch: int = 1000,
    skip: int = 1,
    n_samples: int | None = None,
    seed: int = 0,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    executor: str = "int8",
) -> dict[str, Any]:
    """PREDICT every ``skip``-th sample; returns accuracy, abstain rate and the rows."""
    _check_alpha(alpha)
    smoother = make_smoothing(net, sigma, arith, batch, executor)
    rows = []
    t0 = time.perf_counter()
    for i in _indices(images.shape[0], skip, n_samples):
        p = smoother.predict(images[i], n, alpha, seed=seed, idx=i)
        row = {"idx": i, "label": int(labels[i]), "predict": p, "correct": int(p == int(labels[i]))}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    m = len(rows)
    return {
        "n": m,
        "accuracy": sum(r["correct"] for r in rows) / m if m else 0.0,
        "abstain_rate": sum(r["predict"] == ABSTAIN for r in rows) / m if m else 0.0,
        "seconds": time.perf_counter() - t0,
        "arith": arith,
        "rows": rows,
    }
