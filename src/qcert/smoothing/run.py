"""Certify or predict a dataset with a smoothed classifier, writing Cohen et al.'s TSV row by row.

The TSV has the columns ``idx label predict radius correct time`` (predict −1 = abstain). Rows are
appended and synced as each sample finishes; a rerun with the same output file skips the indices
already there, so an interrupted run resumes where it stopped and never loses finished rows. The
file, its crash rules and the loop are those of every dataset run (:mod:`qcert.runs`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from qcert.errors import InputError
from qcert.quant import QNetwork
from qcert.runs import (
    SMOOTHING,
    TSV_COLUMNS,
    ResultStore,
    Work,
    abstain_rate,
    compute,
    model_sha256,
    read_records,
    run_dataset,
    summarize_certify,
)
from qcert.smoothing.smooth import make_smoothing
from qcert.smoothing.stats import _check_alpha

COLUMNS = TSV_COLUMNS


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The complete rows of an existing smoothing TSV (empty list when the file does not exist or
    is empty); a row torn by a crash is left out."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return []
    return read_records(path, SMOOTHING)


def _indices(total: int, skip: int, n_samples: int | None) -> list[int]:
    if skip < 1:
        raise InputError(f"skip must be ≥ 1, got {skip}")
    idx = list(range(0, total, skip))
    return idx[:n_samples] if n_samples is not None else idx


def _certify_step(smoother: Any, data: dict[str, Any], i: int) -> Any:
    """One CERTIFY (a module-level function: Ray sends it by reference)."""
    return smoother.certify(
        data["images"][i], data["n0"], data["n"], data["alpha"], data["seed"], i
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

    Each row is appended and synced as its sample finishes; rows already in ``out`` are kept and
    their samples skipped (the rules are those of :mod:`qcert.runs.store`: the run's model, σ,
    arithmetic path and α are kept in ``OUT.json`` and a TSV of another run is refused).
    ``on_row(row)`` sees every row of the requested samples, old ones first. With ``ray=True``
    the samples are spread over a Ray cluster (``ray_address``, or a local one with ``workers``
    CPUs); the rows are the same as in one process (noise is seeded per sample), written as they
    arrive. Returns the summary over the requested samples: ``n``, ``certified_acc`` keyed by
    radius ("0.0" … "1.0"), ``abstain_rate``, ``noisy_samples_per_second`` (of this run's new
    rows, per worker), ``arith``, ``sigma``, ``alpha`` and ``model_sha256``.
    """
    alpha = _check_alpha(alpha)
    if n < 1 or n0 < 1:
        raise InputError(f"n and n0 must be ≥ 1, got n={n}, n0={n0}")
    kw = {"logits_fn": logits_fn} if (arith == "int" and logits_fn is not None) else {}
    smoother = make_smoothing(net, sigma, arith, batch, executor, **kw)
    indices = _indices(images.shape[0], skip, n_samples)
    identity = {
        "model_sha256": model_sha256(net), "sigma": smoother.sigma, "arith": smoother.arith,
        "alpha": alpha,
    }  # fmt: skip
    store = None if out is None else ResultStore(out, SMOOTHING, identity)
    params = {"sigma": sigma, "arith": arith, "batch": batch, "executor": executor}
    data = {"images": images, "n0": n0, "n": n, "alpha": alpha, "seed": seed}
    work = Work(make_smoothing, params, _certify_step, data)
    noisy, busy = [0], [0.0]

    def row(i: int, res: Any) -> dict[str, Any]:
        noisy[0] += res.noisy_samples
        busy[0] += res.seconds
        y = int(labels[i])
        return {
            "idx": i, "label": y, "predict": res.predict, "radius": res.radius,
            "correct": int(res.predict == y), "time": res.seconds,
        }  # fmt: skip

    def results(todo: list[int]) -> Iterable[tuple[int, Any]]:
        return compute(
            net, work, todo, solver=smoother, ray=ray, ray_address=ray_address, workers=workers
        )

    rows = run_dataset(indices, results, row, store=store, on_record=on_row)
    summary = summarize_certify(rows, smoother.arith, noisy[0] / busy[0] if busy[0] else 0.0)
    return {**summary, **identity}


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
    t0 = time.perf_counter()

    def results(todo: list[int]) -> Iterable[tuple[int, Any]]:
        return ((i, smoother.predict(images[i], n, alpha, seed=seed, idx=i)) for i in todo)

    def row(i: int, p: int) -> dict[str, Any]:
        y = int(labels[i])
        return {"idx": i, "label": y, "predict": p, "correct": int(p == y)}

    rows = run_dataset(_indices(images.shape[0], skip, n_samples), results, row, on_record=on_row)
    m = len(rows)
    return {
        "n": m,
        "accuracy": sum(r["correct"] for r in rows) / m if m else 0.0,
        "abstain_rate": abstain_rate(rows),
        "seconds": time.perf_counter() - t0,
        "arith": arith,
        "rows": rows,
    }
