"""Empirical robust accuracy under an integer L∞ attack (an upper bound on the true robust accuracy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from qcert.attack.pgd import PGD
from qcert.bounds import eps_box
from qcert.errors import InputError
from qcert.quant.inputs import check_eps, check_labels
from qcert.quant.network import QNetwork


def robust_accuracy(
    net: QNetwork,
    x_int: torch.Tensor,
    labels: torch.Tensor,
    eps: int,
    *,
    steps: int = 20,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    loss: str = "targeted",
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Clean and PGD-robust accuracy of ``net`` at integer radius ``eps``.

    A sample counts as robust when it is classified correctly and PGD (:class:`PGD`) finds no
    counterexample in its ε-box (clipped to the input range): ``robust_acc`` is therefore an upper
    bound on the certified robust accuracy. Every counterexample is confirmed by ``net.predict``; a
    misclassified clean input is its own counterexample.

    Returns a dict: ``n``, ``clean_acc``, ``robust_acc``, ``counterexamples`` (list of ``{index,
    label, predicted, input}`` with ``input`` the flattened integer input). ``on_batch(k, found)``
    is called after each batch with its size and its number of counterexamples.
    """
    eps = check_eps(eps)
    x = net.check_input(x_int)
    n = x.shape[0]
    if n == 0:
        raise InputError("no samples to attack")
    y = check_labels(net, labels, n)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    attack = PGD(net, steps=steps, restarts=restarts, seed=seed, loss=loss)
    clean = robust = 0
    cex: list[dict[str, Any]] = []
    for s in range(0, n, batch_size):
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
        pred = net.predict(xb)
        ok = pred == yb
        clean += int(ok.sum())
        found = 0
        for i in (~ok).nonzero().squeeze(1).tolist():
            cex.append(_record(s + i, int(yb[i]), int(pred[i]), xb[i]))
            found += 1
        idx = ok.nonzero().squeeze(1)
        if idx.numel():
            lo, hi = eps_box(net, xb[idx], eps)
            res = attack(lo, hi, yb[idx], x0=xb[idx])
            robust += int((~res.success).sum())
            for k in res.success.nonzero().squeeze(1).tolist():
                i = int(idx[k])
                cex.append(_record(s + i, int(yb[i]), int(res.predicted[k]), res.adv[k]))
                found += 1
        if on_batch is not None:
            on_batch(xb.shape[0], found)
    cex.sort(key=lambda r: r["index"])
    return {"n": n, "clean_acc": clean / n, "robust_acc": robust / n, "counterexamples": cex}


def _record(index: int, label: int, predicted: int, point: torch.Tensor) -> dict[str, Any]:
    return {
        "index": index,
        "label": label,
        "predicted": predicted,
        "input": [int(v) for v in point.reshape(-1).tolist()],
    }
