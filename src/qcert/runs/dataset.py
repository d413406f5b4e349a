"""The loop of a dataset run: skip what the result file holds, compute the rest (in this process or
on a Ray cluster), append each record as it arrives, return the records of the requested samples.

Per-sample work is described by a :class:`Work`: ``make(net, **params)`` builds the solver (a
``Verifier``, a smoothed classifier) and ``step(solver, data, index)`` computes one sample. On Ray
the model travels as ``.qnn`` bytes and each worker process builds its solver once and keeps it
for the next samples of the same run (:func:`_remote`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qcert.quant.io import model_from_bytes, model_to_bytes
from qcert.quant.network import QNetwork
from qcert.runs.store import ResultStore


def model_sha256(net: QNetwork) -> str:
    """The content hash of a network: sha256 of its canonical ``.qnn`` bytes (what ``save_model``
    writes), the same for a network however it was loaded or built."""
    return hashlib.sha256(model_to_bytes(net)).hexdigest()


@dataclass
class Work:
    """One sample's computation, runnable on a Ray worker: ``make`` and ``step`` are module-level
    functions (Ray sends them by reference), ``params`` and ``data`` plain data and tensors."""

    make: Callable[..., Any]
    params: dict[str, Any]
    step: Callable[[Any, dict[str, Any], int], Any]
    data: dict[str, Any]


_WORKER_CACHE: dict[tuple[Any, ...], Any] = {}


def _remote(payload: dict[str, Any], index: int) -> Any:
    """One sample on a Ray worker; the solver is rebuilt from the model bytes once per process."""
    work: Work = payload["work"]
    key = (hash(payload["model"]), work.make.__module__, work.make.__qualname__, repr(work.params))
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = work.make(model_from_bytes(payload["model"]), **work.params)
    return work.step(_WORKER_CACHE[key], work.data, index)


def compute(
    net: QNetwork,
    work: Work,
    indices: Sequence[int],
    *,
    solver: Any = None,
    ray: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """``(index, result)`` for every index: in this process with ``solver`` (built by
    ``work.make`` when None), in order; or with ``ray=True`` on a Ray cluster (``ray_address``, or a
    local one with ``workers`` CPUs), in completion order."""
    if ray:
        from qcert.parallel import ray_map

        payload = {"model": model_to_bytes(net), "work": work}
        return ray_map(_remote, payload, indices, address=ray_address, workers=workers)
    if solver is None:
        solver = work.make(net, **work.params)
    return ((i, work.step(solver, work.data, i)) for i in indices)


def run_dataset(
    indices: Iterable[int],
    results: Callable[[list[int]], Iterable[tuple[int, Any]]],
    to_record: Callable[[int, Any], dict[str, Any]],
    *,
    store: ResultStore | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the samples ``indices``: the records ``store`` already holds are kept, ``results(todo)``
    computes the others, ``to_record(index, result)`` turns each into a record that is appended to
    ``store`` at once. ``on_record`` sees every record of ``indices``, old ones first. Returns the
    records of ``indices`` (and only those: a file may hold more), sorted by index."""
    wanted = list(indices)
    try:
        done = store.open() if store is not None else {}
        records = [(i, done[i]) for i in wanted if i in done]
        if on_record is not None:
            for _, rec in records:
                on_record(rec)
        for i, res in results([i for i in wanted if i not in done]):
            rec = to_record(i, res)
            if store is not None:
                store.append(rec)
            records.append((i, rec))
            if on_record is not None:
                on_record(rec)
    finally:
        if store is not None:
            store.close()
    return [rec for _, rec in sorted(records, key=lambda p: p[0])]
