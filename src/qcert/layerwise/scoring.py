"""Clean, PGD and QA-IBP-certified accuracy of a quantized network, all with exact integer checks.

* ``clean_acc``: :func:`qcert.quant.accuracy.accuracy` (the reference executor);
* ``pgd_acc``: :func:`qcert.attack.robust_accuracy` (every counterexample re-checked by the
  reference executor): an upper bound on the true robust accuracy;
* ``ibp_certified_acc``: :func:`qcert.bounds.certified_accuracy` (exact int64 QA-IBP): a sound
  lower bound on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from qcert.attack import robust_accuracy
from qcert.bounds import certified_accuracy
from qcert.quant.accuracy import accuracy
from qcert.quant.inputs import check_eps
from qcert.quant.network import QNetwork


def evaluate_qnetwork(
    net: QNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: Sequence[int],
    *,
    pgd_steps: int = 20,
    restarts: int = 1,
    loss: str = "targeted",
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """``{"n", "clean_acc", "pgd_acc": {ε: …}, "ibp_certified_acc": {ε: …}, "seconds"}`` with ε
    keys as strings (JSON). ``on_batch(k)`` is told of each batch of ``k`` attacked samples."""
    eps = [check_eps(e) for e in eps]
    t0 = time.perf_counter()
    out: dict[str, Any] = {"n": int(images.shape[0]), "clean_acc": accuracy(net, images, labels)}
    out["pgd_acc"], out["ibp_certified_acc"] = {}, {}
    for e in eps:
        r = robust_accuracy(
            net,
            images,
            labels,
            e,
            steps=pgd_steps,
            restarts=restarts,
            seed=seed,
            loss=loss,
            on_batch=(lambda k, _found: on_batch(k)) if on_batch is not None else None,
        )
        out["pgd_acc"][str(e)] = r["robust_acc"]
        out["ibp_certified_acc"][str(e)] = certified_accuracy(net, images, labels, e)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


__all__ = ["evaluate_qnetwork"]
