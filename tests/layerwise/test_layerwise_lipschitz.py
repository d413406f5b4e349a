"""Lipschitz estimates against exact linear algebra on explicit matrices of small layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qcert.errors import FormatError, InputError
from qcert.layerwise.lipschitz import (
    AffineOp,
    affine_ops,
    inf_norm,
    network_lipschitz,
    one_norm,
    operator_norm,
    spectral_norm,
    spectral_upper_bound,
)


def explicit_matrix(op: AffineOp) -> torch.Tensor:
    """The operator's matrix, column j = A e_j (built by applying it to every basis vector)."""
    n = math.prod(op.in_shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *op.in_shape)
    return op.apply(basis).reshape(n, -1).t()


CONVS = [
    # (cin, h, w, cout, kh, kw, stride, padding)
    (1, 6, 6, 2, 3, 3, 1, 0),
    (2, 5, 7, 3, 3, 3, 1, 1),
    (3, 7, 7, 4, 4, 4, 2, 1),
    (2, 5, 5, 3, 2, 2, 3, 2),
    (1, 8, 6, 2, 3, 2, 2, 0),
]


@pytest.mark.parametrize("cfg", CONVS)
def test_conv_norms_match_explicit_matrix(cfg: tuple[int, ...]) -> None:
    cin, h, w, cout, kh, kw, s, p = cfg
    gen = torch.Generator().manual_seed(sum(cfg))
    weight = torch.randn(cout, cin, kh, kw, generator=gen, dtype=torch.float64)
    op = AffineOp(weight, (cin, h, w), (s, s), (p, p))
    m = explicit_matrix(op)
    assert m.shape == (math.prod(op.out_shape), cin * h * w)
    exact = float(torch.linalg.svdvals(m)[0])
    power = spectral_norm(op, method="power")
    assert power == pytest.approx(exact, rel=1e-6)
    assert power <= exact * (1 + 1e-9)  # power iteration approaches from below
    assert spectral_norm(op, method="svd") == pytest.approx(exact, rel=1e-12)
    assert spectral_norm(op) == pytest.approx(exact, rel=1e-12)  # small: "auto" is exact
    assert inf_norm(op) == pytest.approx(float(m.abs().sum(1).max()), rel=1e-12)
    assert one_norm(op) == pytest.approx(float(m.abs().sum(0).max()), rel=1e-12)
    assert spectral_upper_bound(op) >= exact * (1 - 1e-12)


@pytest.mark.parametrize("cfg", CONVS)
def test_conv_adjoint_is_the_transpose(cfg: tuple[int, ...]) -> None:
    cin, h, w, cout, kh, kw, s, p = cfg
    gen = torch.Generator().manual_seed(7 + sum(cfg))
    op = AffineOp(torch.randn(cout, cin, kh, kw, generator=gen), (cin, h, w), (s, s), (p, p))
    x = torch.randn(3, cin, h, w, generator=gen, dtype=torch.float64)
    y = torch.randn(3, *op.out_shape, generator=gen, dtype=torch.float64)
    lhs = (op.apply(x) * y).sum(dim=(1, 2, 3))
    rhs = (x * op.adjoint(y)).sum(dim=(1, 2, 3))
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_linear_norms_are_exact() -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(7, 11, generator=gen, dtype=torch.float64)
    op = AffineOp(w, (11,))
    assert spectral_norm(op) == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-12)
    assert inf_norm(op) == pytest.approx(float(w.abs().sum(1).max()))
    assert one_norm(op) == pytest.approx(float(w.abs().sum(0).max()))
    assert operator_norm(op, "inf") == inf_norm(op)
    # another weight of the same shape (used for quantization errors)
    w2 = torch.randn(7, 11, generator=gen, dtype=torch.float64)
    assert spectral_norm(op, w2) == pytest.approx(float(torch.linalg.svdvals(w2)[0]))


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, 1, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
        nn.ReLU(),
        nn.Linear(10, 3),
    )


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_network_bound_holds_on_random_pairs(norm: str) -> None:
    model = small_cnn().double()
    lip = network_lipschitz(model, (1, 8, 8), norm)
    assert len(lip.layers) == 4
    assert lip.bound == pytest.approx(math.prod(lip.layers))
    assert lip.after(1) == pytest.approx(lip.layers[2] * lip.layers[3])
    assert lip.before(2) == pytest.approx(lip.layers[0] * lip.layers[1])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = x + 0.1 * torch.randn(200, 1, 8, 8, generator=gen, dtype=torch.float64)
    p = 2 if norm == "2" else float("inf")
    with torch.no_grad():
        num = torch.linalg.vector_norm(model(x) - model(y), ord=p, dim=1)
    den = torch.linalg.vector_norm((x - y).flatten(1), ord=p, dim=1)
    ratio = float((num / den).max())
    assert 0 < ratio <= lip.bound * (1 + 1e-6)


def test_affine_ops_shapes_follow_the_network() -> None:
    ops = affine_ops(small_cnn(), (1, 8, 8))
    assert [op.in_shape for op in ops] == [(1, 8, 8), (3, 4, 4), (64,), (10,)]
    assert [op.out_shape for op in ops] == [(3, 4, 4), (4, 4, 4), (10,), (3,)]


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(FormatError, match="does not act on"):
        AffineOp(torch.zeros(3, 4), (5,))
    with pytest.raises(FormatError, match="does not act on"):
        AffineOp(torch.zeros(2, 3, 3, 3), (2, 5, 5))
    with pytest.raises(FormatError, match="2-D or 4-D"):
        AffineOp(torch.zeros(3), (3,))
    op = AffineOp(torch.ones(2, 2), (2,))
    with pytest.raises(InputError, match="norm must be"):
        operator_norm(op, "1")
    with pytest.raises(InputError, match="method"):
        spectral_norm(op, method="lanczos")
    with pytest.raises(InputError, match="NaN"):
        spectral_norm(op, torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))
    with pytest.raises(FormatError, match="not supported"):
        affine_ops(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), (2,))
