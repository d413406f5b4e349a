"""The float PGD of PGD training: the box, the loss it raises, bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qcert.attack import pgd_float
from qcert.errors import InputError
from qcert.quant.floatmodel import FloatModel


def tiny_model(seed: int = 0) -> FloatModel:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return FloatModel(module, (1, 4, 4))


def test_pgd_stays_in_the_clipped_box_and_raises_the_loss() -> None:
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 4, 4), generator=gen)
    x[:8] = 0  # some inputs at the edge of the range
    y = torch.randint(0, 3, (64,), generator=gen)
    adv = pgd_float(model, x, y, eps=10, steps=10, generator=gen)
    assert adv.shape == x.shape
    assert bool((adv >= (x - 10).clamp(0, 255) - 1e-4).all())
    assert bool((adv <= (x + 10).clamp(0, 255) + 1e-4).all())
    with torch.no_grad():
        clean = F.cross_entropy(model.logits(x), y)
        attacked = F.cross_entropy(model.logits(adv), y)
    assert attacked > clean
    assert torch.equal(pgd_float(model, x, y, eps=0, steps=10), x.float())
    assert all(p.requires_grad for p in model.module.parameters())  # left as they were


def test_pgd_bad_arguments() -> None:
    model = tiny_model()
    x, y = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(InputError, match="non-negative"):
        pgd_float(model, x, y, eps=-1)
    with pytest.raises(InputError, match="finite"):
        pgd_float(model, x, y, eps=float("nan"))
    with pytest.raises(InputError, match="steps"):
        pgd_float(model, x, y, eps=2, steps=-1)
