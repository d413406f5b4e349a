"""A network's inputs: the one validator of each argument that names inputs (an integer radius ε, a
radius in input levels, labels, an input box) and the probe inputs that executors are checked on.

Every feature package validates through these, so each argument means the same thing and fails
with the same :class:`~qcert.errors.InputError` everywhere.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import torch

from qcert.errors import InputError

if TYPE_CHECKING:
    from qcert.quant.network import QNetwork

__all__ = ["check_box", "check_eps", "check_labels", "check_levels", "random_inputs"]


def check_eps(eps: object) -> int:
    """``eps`` as an int: a non-negative whole number of input steps (bools, NaN, fractions and
    negative values raise :class:`InputError`)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise InputError(f"eps must be a non-negative integer number of input steps, got {eps!r}")
    if isinstance(eps, numbers.Integral):
        value = int(eps)
    else:
        f = float(eps)
        if not math.isfinite(f) or f != math.floor(f):
            raise InputError(
                f"eps must be a whole number of input steps (integer inputs), got {eps!r}"
            )
        value = int(f)
    if value < 0:
        raise InputError(f"eps must be non-negative, got {eps!r}")
    return value


def check_levels(value: object, what: str = "eps") -> float:
    """``value`` as a float: a finite non-negative number of input levels (a radius or step size
    of a float attack, which need not be whole)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be a finite number of input levels, got {value!r}")
    if not math.isfinite(float(value)):
        raise InputError(f"{what} must be a finite number of input levels, got {value!r}")
    if value < 0:
        raise InputError(f"{what} must be non-negative, got {value!r}")
    return float(value)


def check_labels(net: QNetwork | int, labels: object, n: int, what: str = "inputs") -> torch.Tensor:
    """``labels`` as an int64 vector of length ``n`` with values in ``0..K-1``, where ``K`` is
    ``net.num_classes`` (or ``net`` itself when it is a number of classes)."""
    num_classes = net if isinstance(net, int) else net.num_classes
    t = torch.as_tensor(labels)
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise InputError(f"labels must be integers, got dtype {t.dtype}")
    t = t.to(torch.int64).reshape(-1)
    if t.numel() != n:
        raise InputError(f"{t.numel()} labels for {n} {what}")
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise InputError(f"labels must lie in 0..{num_classes - 1}")
    return t


def check_box(
    net: QNetwork | None, lo: torch.Tensor, hi: torch.Tensor, integer: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate an input box ``[lo, hi]`` (same shapes, ``lo <= hi``) of ``net``.

    ``integer=True``: whole numbers inside the input range of ``net``
    (:meth:`QNetwork.check_input`), returned as int64. ``integer=False``: any real bounds without
    NaN, of shape N×``net.input_shape`` (unchecked when ``net`` is None: a float model's box),
    returned as given; training-mode bounds clip them to the input range themselves.
    """
    if integer:
        if net is None:
            raise InputError("an integer box needs its network (the input range)")
        lo, hi = net.check_input(lo), net.check_input(hi)
    if lo.shape != hi.shape:
        raise InputError(f"box bounds have different shapes {tuple(lo.shape)}, {tuple(hi.shape)}")
    if not integer and net is not None:
        shape = net.input_shape
        if lo.dim() != len(shape) + 1 or tuple(lo.shape[1:]) != tuple(shape):
            raise InputError(
                f"expected boxes of shape N×{'×'.join(map(str, shape))}, got {tuple(lo.shape)}"
            )
    if not integer and lo.is_floating_point():
        if bool(torch.isnan(lo).any() | torch.isnan(hi).any()):
            raise InputError("box bounds contain NaN")
    if bool((lo > hi).any()):
        raise InputError("box lower bound exceeds its upper bound")
    return lo, hi


def random_inputs(net: QNetwork, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` integer inputs: the two corners of the input range, inputs drawn from the range's
    extremes only, and uniform ones (int64, N×input shape)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = net.input_range
    shape = (n, *net.input_shape)
    x = torch.randint(lo, hi + 1, shape, generator=g)
    extreme = torch.where(torch.rand(shape, generator=g) < 0.5, lo, hi)
    pick = torch.rand((n,) + (1,) * len(net.input_shape), generator=g) < 0.3
    x = torch.where(pick, extreme, x)
    if n >= 1:
        x[0] = hi
    if n >= 2:
        x[1] = lo
    return x
