"""Lipschitz constants of affine layers and of whole ReLU networks.

A Linear or Conv2d layer (without its bias) is a linear operator ``A`` on its actual input shape.
Its L2 operator norm (largest singular value) is computed exactly by SVD for a Linear layer and by
(block) power iteration on ``AᵀA`` for a convolution (``conv2d`` and its adjoint
``conv_transpose2d``; the estimate converges to ``‖A‖₂`` from below). The L∞→L∞ norm (largest absolute row sum) and the
L1→L1 norm (largest absolute column sum) are exact for both: for a convolution they are the largest
entry of ``|W|`` convolved with a tensor of ones (the zero padding is accounted for). ReLU and
Flatten are 1-Lipschitz in every ℓp norm, so the product of the affine layers' norms bounds the
network's Lipschitz constant (Szegedy et al. 2014).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qcert.errors import FormatError, InputError
from qcert.quant.floatmodel import plan

NORMS = ("2", "inf")
#: a convolution whose explicit matrix costs at most this many multiply-adds to decompose
#: (``in² · out``) gets an exact SVD instead of power iteration
SVD_LIMIT = 1 << 27


@dataclass
class AffineOp:
    """The linear part of a Linear (``weight`` out×in) or Conv2d (out×in×kh×kw, ``stride``,
    ``padding``) layer as an operator on inputs of shape ``in_shape`` (without batch)."""

    weight: torch.Tensor
    in_shape: tuple[int, ...]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.weight = self.weight.detach().to(torch.float64)
        self.in_shape = tuple(int(s) for s in self.in_shape)
        if self.weight.dim() == 2:
            if self.in_shape != (self.weight.shape[1],):
                raise FormatError(
                    f"linear weight {tuple(self.weight.shape)} does not act on {self.in_shape}"
                )
        elif self.weight.dim() == 4:
            if len(self.in_shape) != 3 or self.in_shape[0] != self.weight.shape[1]:
                raise FormatError(
                    f"conv weight {tuple(self.weight.shape)} does not act on {self.in_shape}"
                )
        else:
            raise FormatError(f"weight must be 2-D or 4-D, got {tuple(self.weight.shape)}")

    @property
    def is_conv(self) -> bool:
        return self.weight.dim() == 4

    @property
    def out_shape(self) -> tuple[int, ...]:
        if not self.is_conv:
            return (int(self.weight.shape[0]),)
        kh, kw = self.weight.shape[2:]
        h, w = self.in_shape[1:]
        return (
            int(self.weight.shape[0]),
            (h + 2 * self.padding[0] - kh) // self.stride[0] + 1,
            (w + 2 * self.padding[1] - kw) // self.stride[1] + 1,
        )

    def with_weight(self, weight: torch.Tensor) -> AffineOp:
        """The same operator shape with another weight (e.g. a quantization error ``ΔW``)."""
        return AffineOp(weight, self.in_shape, self.stride, self.padding)

    def apply(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``A x`` for a batch ``x`` of shape B×in_shape."""
        w = self.weight if weight is None else weight
        if self.is_conv:
            return F.conv2d(x, w, None, self.stride, self.padding)
        return x @ w.t()

    def adjoint(self, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``Aᵀ y`` for a batch ``y`` of shape B×out_shape (exactly the input shape back)."""
        w = self.weight if weight is None else weight
        if not self.is_conv:
            return y @ w
        kh, kw = w.shape[2:]
        oh, ow = y.shape[2:]
        extra = [
            self.in_shape[1] - ((oh - 1) * self.stride[0] - 2 * self.padding[0] + kh),
            self.in_shape[2] - ((ow - 1) * self.stride[1] - 2 * self.padding[1] + kw),
        ]
        return F.conv_transpose2d(y, w, None, self.stride, self.padding, tuple(extra))


def affine_ops(module: nn.Module, input_shape: Sequence[int]) -> list[AffineOp]:
    """The affine layers of a float ``nn.Sequential`` (the steps of
    :func:`qcert.quant.floatmodel.plan`; no pooling) as operators on their actual input shapes, in
    order."""
    shape = tuple(int(s) for s in input_shape)
    ops: list[AffineOp] = []
    for step in plan(module):
        m = step.module
        if step.kind == "affine":
            w, _ = step.params()
            if isinstance(m, nn.Conv2d):
                op = AffineOp(w, shape, tuple(m.stride), tuple(m.padding))  # type: ignore[arg-type]
            else:
                op = AffineOp(w, shape)
            ops.append(op)
            shape = op.out_shape
        elif step.kind == "flatten":
            shape = (math.prod(shape),)
        elif step.kind == "pool":
            raise FormatError(f"{step.label} is not supported by the Lipschitz estimates")
    return ops


@torch.no_grad()
def spectral_norm(
    op: AffineOp,
    weight: torch.Tensor | None = None,
    iters: int = 300,
    tol: float = 1e-8,
    seed: int = 0,
    block: int = 8,
    method: str = "auto",
) -> float:
    """``‖A‖₂``, the largest singular value of the operator (with ``weight`` in place of
    ``op.weight`` if given).

    ``method="svd"``: exact, from the explicit matrix (always for Linear; ``"auto"`` uses it for a
    convolution whose matrix is small, ``in² · out ≤ SVD_LIMIT``). ``method="power"``: block power
    iteration on ``AᵀA`` with ``block`` vectors and a Rayleigh-Ritz step (``conv2d`` and
    ``conv_transpose2d``), until the top Ritz value changes by less than ``tol`` (relative). Every
    Ritz value is at most ``‖A‖₂``: the estimate approaches from below, at the rate
    ``(σ_{block+1}/σ_1)²`` per iteration."""
    if method not in ("auto", "svd", "power"):
        raise InputError(f"method must be 'auto', 'svd' or 'power', got {method!r}")
    w = (op.weight if weight is None else weight.detach()).to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise InputError("weight contains NaN or infinity")
    if not op.is_conv:
        return float(torch.linalg.matrix_norm(w, ord=2)) if w.numel() else 0.0
    n = math.prod(op.in_shape)
    if method == "svd" or (method == "auto" and n * n * math.prod(op.out_shape) <= SVD_LIMIT):
        basis = torch.eye(n, dtype=torch.float64).view(n, *op.in_shape)
        return float(torch.linalg.matrix_norm(op.apply(basis, w).reshape(n, -1), ord=2))
    k = max(1, min(block, n))
    gen = torch.Generator().manual_seed(seed)
    v = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q.t()
    sigma = 0.0
    for _ in range(iters):
        u = op.apply(v.reshape(k, *op.in_shape), w).reshape(k, -1)
        ritz = float(torch.linalg.eigvalsh(u @ u.t())[-1].clamp(min=0.0))
        new = math.sqrt(ritz)
        if new == 0.0:
            return 0.0
        if abs(new - sigma) <= tol * new:
            return new
        sigma = new
        back = op.adjoint(u.reshape(k, *op.out_shape), w).reshape(k, -1)
        v = torch.linalg.qr(back.t()).Q.t()
    return sigma


@torch.no_grad()
def inf_norm(op: AffineOp, weight: torch.Tensor | None = None) -> float:
    """``‖A‖∞→∞``, the largest absolute row sum (exact; zero padding included)."""
    w = (op.weight if weight is None else weight.detach()).to(torch.float64).abs()
    if not op.is_conv:
        return float(w.sum(dim=1).max()) if w.numel() else 0.0
    return float(op.apply(torch.ones((1, *op.in_shape), dtype=torch.float64), w).max())


@torch.no_grad()
def one_norm(op: AffineOp, weight: torch.Tensor | None = None) -> float:
    """``‖A‖₁→₁``, the largest absolute column sum (exact; zero padding included)."""
    w = (op.weight if weight is None else weight.detach()).to(torch.float64).abs()
    if not op.is_conv:
        return float(w.sum(dim=0).max()) if w.numel() else 0.0
    return float(op.adjoint(torch.ones((1, *op.out_shape), dtype=torch.float64), w).max())


def operator_norm(op: AffineOp, norm: str = "2", weight: torch.Tensor | None = None) -> float:
    """The operator norm ``‖A‖`` induced by the vector norm ``norm`` ("2" or "inf")."""
    if norm == "2":
        return spectral_norm(op, weight)
    if norm == "inf":
        return inf_norm(op, weight)
    raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def spectral_upper_bound(op: AffineOp, weight: torch.Tensor | None = None) -> float:
    """A guaranteed upper bound ``sqrt(‖A‖₁ ‖A‖∞) ≥ ‖A‖₂`` (Hölder), exact arithmetic aside."""
    return math.sqrt(one_norm(op, weight) * inf_norm(op, weight))


@dataclass(frozen=True)
class NetworkLipschitz:
    """Per-layer operator norms and the product bound of a ReLU network (one norm)."""

    norm: str
    layers: tuple[float, ...]

    @property
    def bound(self) -> float:
        """``Π ‖W_l‖``: a Lipschitz bound of the whole network in the chosen norm (ReLU is
        1-Lipschitz)."""
        return math.prod(self.layers)

    def after(self, l: int) -> float:
        """``Π_{k>l} ‖W_k‖``: how much an error added after affine layer ``l`` can grow."""
        return math.prod(self.layers[l + 1 :])

    def before(self, l: int) -> float:
        """``Π_{k<l} ‖W_k‖``: the Lipschitz bound of the input → input of affine layer ``l`` map."""
        return math.prod(self.layers[:l])


def network_lipschitz(
    module: nn.Module, input_shape: Sequence[int], norm: str = "2"
) -> NetworkLipschitz:
    """Per-layer operator norms of a float ReLU ``nn.Sequential`` on ``input_shape`` and their
    product, an upper bound on its Lipschitz constant in ``norm`` (with respect to the module's
    own input units)."""
    return NetworkLipschitz(
        norm, tuple(operator_norm(op, norm) for op in affine_ops(module, input_shape))
    )


__all__ = [
    "NORMS",
    "SVD_LIMIT",
    "AffineOp",
    "NetworkLipschitz",
    "affine_ops",
    "inf_norm",
    "network_lipschitz",
    "one_norm",
    "operator_norm",
    "spectral_norm",
    "spectral_upper_bound",
]
