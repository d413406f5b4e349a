"""Shared pytest setup.

This folder is on sys.path, so tests import helpers from `qnets`. Under CI (the ``CI`` environment
variable) hypothesis runs derandomized: the same examples every run, so a CI result is reproducible;
local runs explore new examples each time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="module")
def digits_qnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `.qnn` file: an 8-bit digits MLP (64-16-10) converted from a float model trained for 30
    full-batch steps (seeded: the same network every time)."""
    import torch
    from qnets import fit
    from torch import nn

    from qcert import from_float, save_model
    from qcert.data import load

    torch.manual_seed(0)
    ds = load("digits", "train")
    x = ds.images.reshape(-1, 64).float() / 255
    m = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    fit(m, m.parameters(), x, ds.labels, steps=30, lr=2e-2)
    path = tmp_path_factory.mktemp("digits") / "digits.qnn"
    save_model(from_float(m, ds.images[:200].reshape(-1, 64), bits=8), path)
    return path
