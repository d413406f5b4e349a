"""Schedules, losses, pad-and-crop and checkpoints of the training package."""

from __future__ import annotations

import math

import pytest
import torch

from qcert.errors import ModelFileError
from qcert.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from qcert.train.data import epoch_batches, pad_and_crop
from qcert.train.losses import hinge_margin_loss, robust_loss, width_penalty, worst_case_ce_loss
from qcert.train.schedules import RampSchedule, progress_of


def test_ramp_schedule() -> None:
    s = RampSchedule(warmup=0.1, ramp=0.5)
    assert s.ramp_factor(0.0) == 0.0 and s.in_warmup(0.05) and not s.in_warmup(0.1)
    assert s.ramp_factor(0.35) == pytest.approx(0.5)
    assert s.ramp_factor(0.6) == 1.0 and s.ramp_factor(0.9) == 1.0
    assert s.lr_factor(0.3) == 1.0 and s.lr_factor(0.6) == 1.0
    assert s.lr_factor(0.8) == pytest.approx(0.02 + 0.98 * 0.5)
    assert s.lr_factor(1.0) == pytest.approx(0.02)
    with pytest.raises(ValueError):
        RampSchedule(warmup=0.6, ramp=0.5)


def test_progress_follows_steps_or_the_time_budget() -> None:
    assert progress_of(50, 100, 1.0, None) == 0.5
    assert progress_of(50, 100, 90.0, 100.0) == 0.9  # the budget is the binding limit
    assert progress_of(50, 100, 10.0, 100.0) == 0.5
    assert progress_of(500, 100, 0.0, None) == 1.0


def test_hinge_loss_by_hand() -> None:
    lb = torch.tensor([[0.0, 0.1, 0.5], [-0.3, 0.0, 0.2]])
    y = torch.tensor([0, 1])
    # sample 0: j=1: 0.1, j=2: 0 -> 0.05; sample 1: j=0: 0.5, j=2: 0 -> 0.25
    assert float(hinge_margin_loss(lb, y)) == pytest.approx((0.05 + 0.25) / 2)
    mask = torch.tensor([True, False])
    assert float(hinge_margin_loss(lb, y, only_correct=mask)) == pytest.approx(0.05 / 2)
    assert float(robust_loss("hinge", lb, y, mask)) == pytest.approx(0.05 / 2)
    with pytest.raises(ValueError, match="unknown robust loss"):
        robust_loss("l2", lb, y)


def test_worst_case_ce_equals_ce_of_exact_margins() -> None:
    z = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    lb = z.gather(1, y[:, None]) - z  # the bounds of a singleton box
    assert float(worst_case_ce_loss(lb, y)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(z, y)), rel=1e-6
    )
    # looser bounds (column y stays 0) give a larger loss
    looser = (lb - 1.0).scatter(1, y[:, None], 0.0)
    assert float(worst_case_ce_loss(looser, y)) > float(worst_case_ce_loss(lb, y))


def test_width_penalty() -> None:
    assert float(width_penalty([torch.tensor(0.5), torch.tensor(1.25)])) == 1.75
    assert float(width_penalty([])) == 0.0


def test_pad_and_crop_is_an_integer_translation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (20, 1, 6, 6)).float()
    y = pad_and_crop(x, 2, g)
    assert y.shape == x.shape and torch.equal(y, torch.round(y))
    for i in range(20):
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                pad = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
                crop = pad[:, 2 + dy : 2 + dy + 6, 2 + dx : 2 + dx + 6]
                found |= torch.equal(crop, y[i])
        assert found, f"image {i} is not a translated copy"
    assert torch.equal(pad_and_crop(x, 0, g), x)


def test_epoch_batches_are_a_seeded_permutation() -> None:
    a, _ = epoch_batches(10, 3, seed=1, epoch=2)
    b, _ = epoch_batches(10, 3, seed=1, epoch=2)
    c, _ = epoch_batches(10, 3, seed=1, epoch=3)
    assert [t.tolist() for t in a] == [t.tolist() for t in b]
    assert sorted(torch.cat(a).tolist()) == list(range(10)) and len(a) == math.ceil(10 / 3)
    assert torch.cat(a).tolist() != torch.cat(c).tolist()


def test_checkpoint_round_trip_and_errors(tmp_path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "checkpoint.safetensors"
    ck = Checkpoint(
        config={"a": 1},
        epoch=2,
        step_in_epoch=5,
        global_step=17,
        seconds=3.5,
        model=dict(model.state_dict()),
        optimizer=opt.state_dict(),
        history=[{"epoch": 1, "loss": 0.5}],
    )
    save_checkpoint(path, ck)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]
    back = load_checkpoint(path)
    assert (back.epoch, back.step_in_epoch, back.global_step, back.seconds) == (2, 5, 17, 3.5)
    assert back.config == {"a": 1} and back.history == ck.history
    model2 = torch.nn.Linear(3, 2)
    model2.load_state_dict(back.model)
    assert torch.equal(model2.weight, model.weight)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(back.optimizer)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["step"], s2["step"])
    with pytest.raises(ModelFileError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelFileError):
        load_checkpoint(bad)
