"""Spreading independent per-sample work over a Ray cluster (or a local one).

The work item is ``fn(payload, index) -> result``; ``fn`` must be a module-level function and the
payload plain data (qcert sends models as ``.qnn`` bytes, never pickled modules). Results come back as
they finish, so the caller can write them to its resumable output at once; which worker ran an index
does not change its result (every per-sample random generator is seeded by the index).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from qcert.errors import QcertError

LOCAL = "local"


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a declared dependency
        raise QcertError("Ray is not installed: pip install 'qcert[ray]'") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to the Ray cluster at ``address``, or start a local one (``None`` / ``"local"``)."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    try:
        if address in (None, "", LOCAL):
            ray.init(num_cpus=num_cpus, **kw)
        else:
            ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise QcertError(f"cannot start or reach Ray at {address or 'local'}: {e}") from None
    return ray


def _call(fn: Callable[[Any, int], Any], payload: Any, index: int) -> tuple[int, Any]:
    import numba
    import torch

    torch.set_num_threads(1)  # one core per task; Ray schedules the cores
    numba.set_num_threads(1)  # the compiled noise kernels too
    return index, fn(payload, index)


def ray_map(
    fn: Callable[[Any, int], Any],
    payload: Any,
    indices: Sequence[int],
    *,
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(payload, index))`` for every index, in completion order, computed by Ray
    tasks of one CPU each with at most ``2 × workers`` in flight (``workers``: the cluster's CPUs)."""
    ray = init_ray(address, num_cpus=workers if address in (None, "", LOCAL) else None)
    remote = ray.remote(num_cpus=1)(_call)
    ref = ray.put(payload)
    limit = 2 * (workers or max(1, int(ray.cluster_resources().get("CPU", 1))))
    pending: list[Any] = []
    todo = list(indices)
    while todo or pending:
        while todo and len(pending) < limit:
            pending.append(remote.remote(fn, ref, todo.pop(0)))
        done, pending = ray.wait(pending, num_returns=1)
        for obj in done:
            yield ray.get(obj)


def shutdown() -> None:
    """Stop the Ray connection this process started (no-op when none)."""
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()
