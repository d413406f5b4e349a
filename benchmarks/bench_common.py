"""Setup shared by the benchmarks (not a benchmark itself: run as a script it does nothing).

The benchmarks run as scripts, so this folder is on ``sys.path``: ``from bench_common import ...``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from qcert.quant import QNetwork, from_float

MLP = "mlp 784-256-128-10"
CNN = "cnn (16,5,2) (32,3,2) 100 10"


def mnist_float_models() -> dict[str, nn.Module]:
    """The benchmarks' float MNIST models, untrained and seeded (0): an MLP and a small CNN."""
    torch.manual_seed(0)
    return {
        MLP: nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        ),
        CNN: nn.Sequential(
            nn.Conv2d(1, 16, 5, 2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 5 * 5, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        ),
    }


def int8_model(model: nn.Module, calib: torch.Tensor) -> QNetwork:
    """``model`` converted to an 8-bit QNetwork, calibrated on ``calib``."""
    return from_float(model.eval(), calib, bits=8)


def train_for(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, seconds: float) -> nn.Module:
    """``model`` trained on ``(x, labels)`` with Adam (lr 1e-3, batches of 128 drawn at random)
    for ``seconds`` of wall-clock time; returned in eval mode."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(0, x.shape[0], (128,))
        loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def int_options(doc: str | None, **defaults: int) -> argparse.Namespace:
    """The command line of a benchmark whose options are all integers: ``--name N``, with the
    given defaults."""
    p = argparse.ArgumentParser(description=doc)
    for name, default in defaults.items():
        p.add_argument(f"--{name}", type=int, default=default)
    return p.parse_args()


def per_second(n: int, fn: Callable[[], object]) -> float:
    """``n`` over the seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)
