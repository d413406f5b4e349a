"""Small random QNetworks shared by the tests (integer weights, tiny input ranges, so that every
input of a box can be enumerated)."""

from __future__ import annotations

import torch

from qcert.quant import FixedPointFormat, QLinear, QNetwork, QRequant

#: 4-bit unsigned inputs (0..15): boxes small enough to enumerate
SMALL_INPUT = FixedPointFormat(4, False, 2)


def small_mlp(
    seed: int,
    d: int,
    k: int,
    logit_requant: bool = False,
    rounding: str = "half_up",
    hidden: int = 5,
    logit_bits: int = 3,
) -> QNetwork:
    """d → hidden → k MLP with 4-bit weights, 3-bit ReLU activations, 8-bit biases; with
    ``logit_requant`` the logits are requantized to ``logit_bits`` signed bits (ties are common)."""
    g = torch.Generator().manual_seed(seed)
    w, a = FixedPointFormat(4, True, 2), FixedPointFormat(3, False, 1)
    b = FixedPointFormat(8, True, 3)
    layers = [
        QLinear.from_int(
            torch.randint(-8, 8, (hidden, d), generator=g),
            torch.randint(-40, 40, (hidden,), generator=g),
            w,
            b,
        ),
        QRequant(a, rounding),
        QLinear.from_int(
            torch.randint(-8, 8, (k, hidden), generator=g),
            torch.randint(-20, 20, (k,), generator=g),
            w,
            b,
        ),
    ]
    if logit_requant:
        layers.append(QRequant(FixedPointFormat(logit_bits, True, 0), rounding))
    return QNetwork(layers, (d,), SMALL_INPUT)
