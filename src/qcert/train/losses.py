"""Losses of certified training on margin lower bounds ``LB(z_y - z_j)`` (B×K, column y = 0).

* :func:`hinge_margin_loss`: the QA-IBP authors' robust term, the mean over ``j ≠ y`` of
  ``max(0, margin - LB_j)`` (margin 0.2 in real logit units), optionally counting only the samples
  the network classifies correctly (their MNIST / Fashion-MNIST setting).
* :func:`worst_case_ce_loss`: the worst-case cross-entropy of IBP (Gowal et al. 2018; Wong & Kolter
  2018): ``CE(-LB, y)``, the cross-entropy of the logits that the bounds allow to be worst.
* :func:`width_penalty`: the QA-IBP regulariser, the sum over hidden layers of the mean interval
  width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ROBUST_LOSSES",
    "hinge_margin_loss",
    "robust_loss",
    "width_penalty",
    "worst_case_ce_loss",
]

ROBUST_LOSSES = ("ce", "hinge")


def hinge_margin_loss(
    margin_lb: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    only_correct: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the batch of the mean over ``j ≠ y`` of ``relu(margin - LB_j)``.

    ``only_correct`` (bool, B) zeroes the term of the samples where it is False.
    """
    k = margin_lb.shape[1]
    other = ~F.one_hot(labels, k).to(torch.bool)
    per = (F.relu(margin - margin_lb) * other).sum(1) / max(1, k - 1)
    if only_correct is not None:
        per = per * only_correct.to(per.dtype)
    return per.mean()


def worst_case_ce_loss(margin_lb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``CE(-LB, y)``: cross-entropy of the worst-case logit differences allowed by the bounds."""
    return F.cross_entropy(-margin_lb, labels)


def robust_loss(
    kind: str,
    margin_lb: torch.Tensor,
    labels: torch.Tensor,
    correct: torch.Tensor | None = None,
    margin: float = 0.2,
) -> torch.Tensor:
    """The robust term by name: ``"hinge"`` (with ``correct`` as the mask) or ``"ce"``."""
    if kind == "hinge":
        return hinge_margin_loss(margin_lb, labels, margin, correct)
    if kind == "ce":
        return worst_case_ce_loss(margin_lb, labels)
    raise ValueError(f"unknown robust loss {kind!r}; expected one of {', '.join(ROBUST_LOSSES)}")


def width_penalty(widths: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of the per-layer mean interval widths (0 when there are no hidden layers)."""
    if not widths:
        return torch.zeros(())
    return torch.stack([w.to(torch.float32) for w in widths]).sum()
