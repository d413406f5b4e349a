"""Split rules of the branch and bound: which input dimension of a box to split.

Every rule only picks a dimension of positive width; the split itself (in ``bab``) lands on
integers, ``[l, m]`` and ``[m+1, u]`` with ``m = floor((l+u)/2)``, so any choice terminates. Rules:

* ``widest``: the widest dimension (ties to the smallest index).
* ``smear``: width × the first layer's weight mass on the dimension (ReluVal's "smear", static).
* ``gradient``: width × ``|∂ objective / ∂x|`` at the box centre on the fake-quant network, where
  the objective is the margin of the box's hardest disjunct (for robustness, ``z_j − z_c`` of the
  class ``j`` closest to winning).
* ``bound``: tries the ``k`` best dimensions by the smear score, bounds both halves of each, and
  keeps the split whose worse half is closest to a proof (the "bound improvement" rule, as in
  BaBSR / filtered smart branching); its children's bounds are reused, not recomputed.

``smear`` is the default: it was the fastest on a small MNIST-like network (docs/verify.md).
"""

from __future__ import annotations

import torch

from qcert.errors import InputError
from qcert.quant.fake_forward import FakeForward
from qcert.quant.layers import QConv2d, QLinear
from qcert.quant.network import QNetwork
from qcert.verify.bounds import SpecBounds
from qcert.verify.spec import OutputSpec

RULES = ("widest", "smear", "gradient", "bound")


def parse_rule(text: str) -> tuple[str, int]:
    """``"bound"`` or ``"bound:K"`` → (name, K); other names → (name, 0)."""
    name, _, k = text.partition(":")
    if name not in RULES:
        raise InputError(f"unknown split rule {text!r}; choose from {', '.join(RULES)}")
    if k and name != "bound":
        raise InputError(f"only the bound rule takes a parameter, got {text!r}")
    try:
        kk = int(k) if k else (4 if name == "bound" else 0)
    except ValueError:
        raise InputError(f"bad split rule parameter in {text!r}") from None
    if name == "bound" and kk < 1:
        raise InputError(f"the bound rule needs K >= 1, got {text!r}")
    return name, kk


def split_boxes(
    lo: torch.Tensor, hi: torch.Tensor, dims: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Children of boxes (N×S) split along ``dims`` (N): rows ``0..N-1`` are the lower halves
    ``[l, m]``, rows ``N..2N-1`` the upper halves ``[m+1, u]``; ``m = floor((l+u)/2)``."""
    rows = torch.arange(lo.shape[0])
    l, u = lo[rows, dims], hi[rows, dims]
    m = torch.div(l + u, 2, rounding_mode="floor")
    lo2, hi2 = torch.cat([lo, lo]), torch.cat([hi, hi])
    n = lo.shape[0]
    hi2[rows, dims] = m
    lo2[rows + n, dims] = m + 1
    return lo2, hi2


class Splitter:
    """Chooses split dimensions for batches of boxes (flat N×S int64) with their row bounds."""

    def __init__(
        self,
        net: QNetwork,
        spec: OutputSpec,
        bounds: SpecBounds,
        rule: str = "gradient",
        fake: FakeForward | None = None,
    ) -> None:
        self.name, self.k = parse_rule(rule)
        self.net, self.spec, self.bounds = net, spec, bounds
        goal = spec.goal(1)
        self.C, self.thr = goal.C[0], goal.thr[0]  # D×M×K, D×M
        self.fake = fake if fake is not None else FakeForward(net)
        self.smear_w: torch.Tensor | None = None
        if self.name in ("smear", "bound"):
            self.smear_w = _first_layer_mass(net)

    def choose(
        self, lo: torch.Tensor, hi: torch.Tensor, ub: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns (dims N, children's row bounds 2N×R or None, probe points or None).

        Probes (gradient rules only) are cheap attack candidates for an exact check: the box corner
        the gradient points to, and the box centre when its float objective looks successful."""
        width = (hi - lo).to(torch.float64)
        splittable = width > 0
        if self.name == "widest":
            return torch.argmax(width, dim=1), None, None
        if self.name in ("smear", "bound"):
            assert self.smear_w is not None
            score = width * self.smear_w.unsqueeze(0)
            score = torch.where(splittable, score + 1e-9 * width, -1.0)
            if self.name == "bound":
                return (*self._best_bound(lo, hi, score, splittable), None)
            return torch.argmax(score, dim=1), None, None
        grad, obj = self._gradient(lo, hi, ub)
        score = grad.abs() * width
        # no gradient signal (saturated units): fall back to the widest dimension
        score = torch.where(splittable, score + 1e-9 * width, -1.0)
        probe = torch.where(grad > 0, hi, lo)
        # the point the centre's fake forward evaluated (inputs round half up); float32 may be
        # inexact, so flag generously and let the exact check decide
        hot = obj >= -(1.0 + 1e-5 * float(obj.abs().max()))
        if hot.any():
            probe = torch.cat([probe, torch.div(lo[hot] + hi[hot] + 1, 2, rounding_mode="floor")])
        return torch.argmax(score, dim=1), None, probe

    def _gradient(
        self, lo: torch.Tensor, hi: torch.Tensor, ub: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``∂ objective / ∂x`` (float64 N×S) and the objective (N) at each box centre, for the
        box's hardest disjunct."""
        d = self.spec.disjunct_slack(ub).argmax(dim=1)
        c, thr = self.C[d].to(torch.float32), self.thr[d].to(torch.float32)  # N×M×K, N×M
        x = ((lo + hi).to(torch.float32) * 0.5).view(-1, *self.net.input_shape)
        with torch.enable_grad():
            x.requires_grad_(True)
            z = self.fake(x)
            obj = ((c * z[:, None, :]).sum(-1) - thr).min(-1).values
            (g,) = torch.autograd.grad(obj.sum(), x)
        return g.reshape(lo.shape[0], -1).to(torch.float64), obj.detach()

    def _best_bound(
        self, lo: torch.Tensor, hi: torch.Tensor, score: torch.Tensor, splittable: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = lo.shape[0]
        k = min(self.k, lo.shape[1])
        cand = torch.topk(score, k, dim=1).indices  # N×k, best first
        valid = splittable.gather(1, cand)
        valid[:, 0] = True  # the top dimension is splittable (every box here has one)
        los, his = [], []
        for i in range(k):
            l2, h2 = split_boxes(lo, hi, cand[:, i])
            los.append(l2)
            his.append(h2)
        ub = self.bounds.upper(torch.cat(los), torch.cat(his)).view(k, 2, n, -1)
        bad = self.spec.badness(ub.reshape(k * 2 * n, -1)).view(k, 2, n)
        worst = bad.max(dim=1).values.t()  # N×k: the worse half of each candidate split
        total = bad.clamp(min=0).sum(dim=1).t()  # tie-break: total remaining work
        key = worst.to(torch.float64) + total.to(torch.float64) * 1e-12
        key = torch.where(valid, key, torch.inf)
        best = key.argmin(dim=1)  # first (best gradient score) among equals
        rows = torch.arange(n)
        dims = cand[rows, best]
        child = torch.cat([ub[best, 0, rows], ub[best, 1, rows]])
        return dims, child


def _first_layer_mass(net: QNetwork) -> torch.Tensor:
    """Σ |W| of the first affine layer per input element (float64, flattened input)."""
    first = net.affine_layers()[0] if net.affine_layers() else None
    size = 1
    for s in net.input_shape:
        size *= s
    if first is None:
        return torch.ones(size, dtype=torch.float64)
    w = first.int_weight().abs().to(torch.float64)
    if isinstance(first, QLinear) and first.in_features == size:
        return w.sum(dim=0)
    if isinstance(first, QConv2d) and net.layers[0] is first:
        ones = torch.ones(1, first.out_channels, *first.out_shape[1:], dtype=torch.float64)  # type: ignore[index]
        x = torch.zeros(1, *net.input_shape, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            y = torch.nn.functional.conv2d(x, w, None, first.stride, first.padding)
            (g,) = torch.autograd.grad((y * ones).sum(), x)
        return g.reshape(-1)
    return torch.ones(size, dtype=torch.float64)
