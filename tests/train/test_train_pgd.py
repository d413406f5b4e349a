"""PGD adversarial training on the shared loop: the files, resuming, bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from qcert.attack import float_pgd_accuracy
from qcert.errors import DataError, InputError
from qcert.quant.floatmodel import load_float
from qcert.train import CHECKPOINT_NAME, load_checkpoint, train_pgd


def test_train_pgd_writes_model_metrics_and_resumes(tmp_path: Path) -> None:
    kw = dict(steps=2, n_train=192, n_eval=60, batch_size=64, eval_steps=3, progress=False)
    m1 = train_pgd("digits", "mlp-small", 16, 1, tmp_path, **kw)
    assert set(m1) >= {"clean_acc", "pgd_acc", "seconds", "eps", "stopped"}
    assert m1["stopped"] == "epochs" and m1["n_eval"] == 60
    assert 0 <= m1["pgd_acc"] <= 1 and 0 <= m1["clean_acc"] <= 1
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == m1
    model = load_float(tmp_path / "float.safetensors")
    assert model.meta["eps"] == 16 and model.meta["method"] == "pgd"
    assert model.input_shape == (1, 8, 8) and model.input_scale == 1 / 256
    first = [p.clone() for p in model.module.parameters()]
    # more epochs resume from the saved state
    m2 = train_pgd("digits", "mlp-small", 16, 2, tmp_path, **kw)
    assert m2["epochs"] == 2 and m2["seconds"] >= m1["seconds"]
    second = [p.clone() for p in load_float(tmp_path / "float.safetensors").module.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    # a finished run is not trained again
    train_pgd("digits", "mlp-small", 16, 2, tmp_path, **kw)
    third = list(load_float(tmp_path / "float.safetensors").module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(second, third))
    # a float PGD accuracy never exceeds the clean one on the same samples (same model, eps 0)
    x = torch.randint(0, 256, (30, 1, 8, 8))
    y = torch.randint(0, 10, (30,))
    assert float_pgd_accuracy(model, x, y, 0, 3) == pytest.approx(
        float((model.logits(x.float()).argmax(1) == y).float().mean())
    )


def test_train_pgd_time_budget_and_custom_module(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    m = train_pgd(
        "digits",
        module,
        8,
        3,
        tmp_path,
        steps=1,
        time_budget=1e-6,
        n_train=128,
        n_eval=20,
        eval_steps=1,
        progress=False,
    )
    assert m["stopped"] == "time_budget" and m["arch"] == "custom"
    assert (tmp_path / "float.safetensors").exists()
    assert batches_done(tmp_path) == 1  # stopped after its first batch


def batches_done(folder: Path) -> int:
    return load_checkpoint(folder / CHECKPOINT_NAME).global_step


def test_a_stopped_run_resumes_at_its_batch(tmp_path: Path) -> None:
    kw = dict(steps=1, n_train=192, n_eval=20, batch_size=64, eval_steps=1, progress=False)
    m = train_pgd("digits", "mlp-small", 8, 2, tmp_path, time_budget=1e-6, **kw)
    assert m["stopped"] == "time_budget" and batches_done(tmp_path) == 1
    m = train_pgd("digits", "mlp-small", 8, 2, tmp_path, **kw)
    assert m["stopped"] == "epochs" and batches_done(tmp_path) == 6  # 2 epochs of 3 batches


def test_train_pgd_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="non-negative"):
        train_pgd("digits", "mlp-small", -1, 1, tmp_path, progress=False)
    with pytest.raises(InputError, match="epochs"):
        train_pgd("digits", "mlp-small", 8, 0, tmp_path, progress=False)
    with pytest.raises(InputError, match="time_budget"):
        train_pgd("digits", "mlp-small", 8, 1, tmp_path, time_budget=0, progress=False)
    with pytest.raises(InputError, match="unknown architecture"):
        train_pgd("digits", "vgg", 8, 1, tmp_path, progress=False)
    with pytest.raises(DataError, match="unknown dataset"):
        train_pgd("imagenet", "mlp-small", 8, 1, tmp_path, progress=False)
