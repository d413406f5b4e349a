"""Exact QA-IBP bounds (int64) on integer input boxes, with the last layer fused with the margin
matrix ``C = [e_y - e_j]``, and the tie-aware robustness test built on them.

Everything here is exact integer arithmetic: a box is *certified* only if every integer input in it
is classified ``y`` by the reference executor (argmax ties go to the smallest index).
"""

from __future__ import annotations

import torch

from qcert.quant.inputs import check_eps, check_labels
from qcert.quant.layers import QLinear, QRequant
from qcert.quant.network import QNetwork


def eps_box(net: QNetwork, x: torch.Tensor, eps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer L∞ box ``[x - eps, x + eps]`` clipped to the network's input range (int64)."""
    eps = check_eps(eps)
    x = net.check_input(x)
    lo, hi = net.input_range
    return (x - eps).clamp(lo, hi), (x + eps).clamp(lo, hi)


def _split_point(net: QNetwork) -> tuple[int, bool]:
    """Index of the last affine layer and whether margin fusion is possible there."""
    for i in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[i]
        if isinstance(layer, QLinear):
            tail_ok = all(isinstance(m, QRequant) for m in net.layers[i + 1 :])
            return i, tail_ok and i == len(net.layers) - 1
        if not isinstance(layer, QRequant):
            break
    return len(net.layers), False


@torch.no_grad()
def margin_lower_bounds(
    net: QNetwork, lo: torch.Tensor, hi: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Exact int64 lower bounds of ``z_y - z_j`` over each integer box, shape B×K.

    The column ``j = y`` is 0. When the network ends in a linear layer (logits = accumulators), that
    layer is fused with the margin matrix: ``(W_y - W_j) x + (b_y - b_j)`` is bounded directly,
    which is tighter than subtracting the logits' separate bounds.
    """
    labels = check_labels(net, labels, lo.shape[0], "boxes")
    idx, fused = _split_point(net)
    if fused:
        bounds = net.int_bounds(lo, hi, upto=idx)
        l, u = bounds[-1] if bounds else (net.check_input(lo), net.check_input(hi))
        last = net.layers[idx]
        assert isinstance(last, QLinear)
        w = last.int_weight()  # K×D
        cw = w[labels].unsqueeze(1) - w.unsqueeze(0)  # B×K×D: rows W_y - W_j
        pos, neg = cw.clamp(min=0), cw.clamp(max=0)
        lb = (pos * l.unsqueeze(1)).sum(-1) + (neg * u.unsqueeze(1)).sum(-1)
        b = last.int_bias_acc()
        if b is not None:
            lb = lb + (b[labels].unsqueeze(1) - b.unsqueeze(0))
    else:
        l, u = net.int_bounds(lo, hi)[-1]
        lb = l.gather(1, labels.unsqueeze(1)) - u
    lb[torch.arange(lb.shape[0]), labels] = 0
    return lb


def required_margin(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The smallest integer margin ``z_y - z_j`` that keeps class ``y`` against ``j`` (B×K):
    1 for ``j < y`` (a tie goes to ``j``), 0 for ``j > y`` and for ``j = y``."""
    j = torch.arange(num_classes).unsqueeze(0)
    return (j < labels.reshape(-1, 1)).to(torch.int64)


@torch.no_grad()
def certify_boxes(
    net: QNetwork, lo: torch.Tensor, hi: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """True for each box where QA-IBP proves every integer input is classified ``labels`` (B)."""
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    lb = margin_lower_bounds(net, lo, hi, labels)
    return (lb >= required_margin(labels, net.num_classes)).all(dim=1)


@torch.no_grad()
def certified_accuracy(
    net: QNetwork, x: torch.Tensor, labels: torch.Tensor, eps: int, batch_size: int = 256
) -> float:
    """Share of samples that are correctly classified and certified on their whole ε-box by exact
    QA-IBP alone (no splitting): a sound lower bound on the verified robust accuracy."""
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    ok = 0
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s : s + batch_size], labels[s : s + batch_size]
        lo, hi = eps_box(net, xb, eps)
        ok += int((certify_boxes(net, lo, hi, yb) & (net.predict(xb) == yb)).sum())
    return ok / max(1, x.shape[0])
