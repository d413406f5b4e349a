"""The per-sample loop's Ray side without Ray: each worker process builds its solver once per run,
from the model bytes, and a run with other parameters or another model gets a new one."""

from __future__ import annotations

from typing import Any

import torch
from qnets import small_mlp

from qcert.quant import QNetwork
from qcert.quant.io import model_to_bytes
from qcert.runs import Work, compute, model_sha256
from qcert.runs.dataset import _remote

BUILT: list[tuple[str, int]] = []


def make(net: QNetwork, scale: int) -> tuple[QNetwork, int]:
    BUILT.append((model_sha256(net), scale))
    return net, scale


def step(solver: tuple[QNetwork, int], data: dict[str, Any], i: int) -> int:
    net, scale = solver
    return scale * int(net.predict(data["x"][i : i + 1])[0])


def test_worker_builds_its_solver_once_per_run() -> None:
    BUILT.clear()
    nets = [small_mlp(0, 3, 3), small_mlp(1, 3, 3)]
    x = torch.randint(0, 16, (5, 3), generator=torch.Generator().manual_seed(0))
    work = Work(make, {"scale": 10}, step, {"x": x})
    local = dict(compute(nets[0], work, range(5)))
    payload = {"model": model_to_bytes(nets[0]), "work": work}
    assert {i: _remote(payload, i) for i in range(5)} == local
    assert len(BUILT) == 2  # one local solver, one for the "worker"
    _remote({**payload, "work": Work(make, {"scale": 3}, step, {"x": x})}, 0)
    _remote({"model": model_to_bytes(nets[1]), "work": work}, 0)
    assert [b[1] for b in BUILT] == [10, 10, 3, 10] and BUILT[3][0] == model_sha256(nets[1])
    assert model_sha256(nets[0]) != model_sha256(nets[1])
