"""Accuracy of a QNetwork measured with the reference executor."""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcert.errors import InputError
from qcert.quant.network import QNetwork


@torch.no_grad()
def accuracy(
    net: QNetwork,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Share of ``images`` whose reference-executor class equals ``labels``.

    ``on_batch(k)`` is called after each batch with the number of samples it held.
    """
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise InputError("no samples to evaluate")
    correct = 0
    for s in range(0, images.shape[0], batch_size):
        xb, yb = images[s : s + batch_size], labels[s : s + batch_size]
        correct += int((net.predict(xb) == yb).sum())
        if on_batch is not None:
            on_batch(xb.shape[0])
    return correct / images.shape[0]
