"""End-to-end training on the tiny `digits` dataset: every method, outputs, resume, time budget,
interruption, errors, and QA-IBP's gain in exactly certified accuracy over plain QAT."""

from __future__ import annotations

import json

import pytest
import torch

from qcert.bounds import certified_accuracy
from qcert.data import load
from qcert.errors import ModelFileError, QcertError
from qcert.quant import load_model
from qcert.train import CHECKPOINT_NAME, ConfigError, TrainConfig, load_checkpoint, train
from qcert.train.qaibp import QAIBPMethod

FAST = {"dataset": "digits", "arch": "mlp-small", "n_test": 80, "pgd_steps": 3}


def _cfg(tmp_path, name: str, **kw) -> TrainConfig:
    return TrainConfig(out=str(tmp_path / name), **{**FAST, **kw})


@pytest.mark.parametrize("method", ["qa-ibp", "qat", "float", "float-ibp"])
def test_each_method_writes_valid_outputs(tmp_path, method: str) -> None:
    res = train(_cfg(tmp_path, method, method=method, eps=2, epochs=2))
    net = load_model(res.model_path)
    metrics = json.loads(res.metrics_path.read_text())
    assert metrics["method"] == method and metrics["arch"] == "mlp-small"
    assert metrics["dataset"] == "digits" and metrics["n_test"] == 80
    assert set(metrics["ibp_certified_acc"]) == {"1", "2"}
    assert metrics["epochs"] == 2 and metrics["stopped"] == "completed"
    assert isinstance(metrics["pgd_acc"], float) and metrics["seconds"] > 0
    # the numbers are those of the saved integer network
    images, labels = load("digits", "test", n=80)
    x = images.reshape(80, *net.input_shape)
    assert metrics["clean_acc"] == pytest.approx(float((net.predict(x) == labels).float().mean()))
    for e in (1, 2):
        assert metrics["ibp_certified_acc"][str(e)] == pytest.approx(
            certified_accuracy(net, x, labels, e)
        )
    assert metrics["ibp_certified_acc"]["2"] <= metrics["pgd_acc"] <= metrics["clean_acc"]
    if method == "float-ibp":
        fi = metrics["float_ibp"]["2"]
        assert (
            fi["still_certified_after_ptq"] + fi["not_certifiable_after_ptq"]
            == (fi["float_certified"])
        )
        assert fi["attackable_after_ptq"] <= fi["not_certifiable_after_ptq"]
    assert load_checkpoint(tmp_path / method / CHECKPOINT_NAME).epoch == 2


def test_qaibp_certifies_more_than_qat(tmp_path) -> None:
    common = {"dataset": "digits", "arch": "cnn-small", "eps": 1, "epochs": 12, "pgd_steps": 0}
    qat = train(TrainConfig(out=str(tmp_path / "qat"), method="qat", **common))
    qaibp = train(TrainConfig(out=str(tmp_path / "qaibp"), method="qa-ibp", **common))
    c_qat = qat.metrics["ibp_certified_acc"]["1"]
    c_ibp = qaibp.metrics["ibp_certified_acc"]["1"]
    assert c_ibp >= c_qat + 0.3, (c_qat, c_ibp)
    assert qaibp.metrics["clean_acc"] >= 0.6


def test_resume_gives_the_uninterrupted_result(tmp_path, monkeypatch) -> None:
    kw = {"method": "qa-ibp", "eps": 2, "epochs": 4, "pgd_steps": 0}
    full = train(_cfg(tmp_path, "full", **kw))

    calls = {"n": 0}
    original = QAIBPMethod.loss

    def interrupt_in_epoch_3(self, x, y, sv):
        calls["n"] += 1
        if calls["n"] == 2 * 12 + 5:  # 12 steps per epoch (1437 samples, batch 128)
            raise KeyboardInterrupt
        return original(self, x, y, sv)

    monkeypatch.setattr(QAIBPMethod, "loss", interrupt_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "split", **kw))
    monkeypatch.setattr(QAIBPMethod, "loss", original)
    # the interrupted run left the last finished epoch's checkpoint and a usable model
    ck = load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)
    assert (ck.epoch, ck.step_in_epoch, ck.global_step) == (2, 0, 24)
    assert load_model(tmp_path / "split" / "model.qnn").num_classes == 10
    assert not (tmp_path / "split" / "metrics.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(tmp_path, "split", **kw))
    resumed = train(_cfg(tmp_path, "split", resume=True, **kw))
    a, b = full.net, resumed.net
    for la, lb in zip(a.affine_layers(), b.affine_layers()):
        assert torch.equal(la.int_weight(), lb.int_weight())
        assert torch.equal(la.int_bias(), lb.int_bias())
    assert resumed.metrics["epochs"] == 4 and resumed.metrics["steps"] == 48
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.metrics["ibp_certified_acc"] == full.metrics["ibp_certified_acc"]


def test_resume_errors(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="no checkpoint"):
        train(_cfg(tmp_path, "none", resume=True, epochs=1))
    train(_cfg(tmp_path, "a", method="qat", epochs=1, pgd_steps=0))
    with pytest.raises(ConfigError, match="differ from the checkpoint.*seed"):
        train(_cfg(tmp_path, "a", method="qat", epochs=2, seed=3, resume=True))
    # more epochs on resume continue the count
    res = train(_cfg(tmp_path, "a", method="qat", epochs=2, resume=True, pgd_steps=0))
    assert res.metrics["epochs"] == 2 and [h["epoch"] for h in res.history] == [1, 2]


def test_time_budget_stops_cleanly_and_still_evaluates(tmp_path, monkeypatch) -> None:
    """On a fake clock of the training loop that runs 3/16 s per training step: the budget of
    0.05 min = 3 s is reached after exactly 16 steps (mid epoch 2, at 12 steps an epoch)."""
    import types

    from qcert.train import loop

    clock = {"steps": 0}
    original = QAIBPMethod.loss

    def one_tick_per_step(self, x, y, sv):
        clock["steps"] += 1
        return original(self, x, y, sv)

    monkeypatch.setattr(QAIBPMethod, "loss", one_tick_per_step)
    monkeypatch.setattr(
        loop, "time", types.SimpleNamespace(perf_counter=lambda: clock["steps"] * 3 / 16)
    )
    res = train(
        _cfg(tmp_path, "tb", method="qa-ibp", eps=1, epochs=500, time_budget=0.05, pgd_n=30)
    )
    m = res.metrics
    assert m["pgd_n"] == 30 and m["n_test"] == 80
    assert m["stopped"] == "time budget" and m["epochs"] < 500
    # it stopped at the first step on the budget, not after it
    assert m["steps"] == clock["steps"] == 16 and m["seconds"] == 3.0 and m["epochs"] == 1
    assert res.model_path.exists() and res.metrics_path.exists()
    assert "1" in m["ibp_certified_acc"] and m["pgd_acc"] is not None
    # the whole schedule ran inside the budget: the last steps used the full ε
    assert m["history"][-1]["eps"] == pytest.approx(1.1)
    assert m["history"][-1]["partial"] and m["history"][-1]["steps"] == 16
    ck = load_checkpoint(tmp_path / "tb" / CHECKPOINT_NAME)
    assert ck.global_step == m["steps"]
    assert (ck.epoch, ck.step_in_epoch, ck.seconds) == (1, 4, 3.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"arch": "resnet"}, "unknown architecture"),
        ({"method": "magic"}, "unknown method"),
        ({"dataset": "imagenet"}, "unknown dataset"),
        ({"eps": -1}, "eps must be ≥ 0"),
        ({"epochs": 0}, "epochs must be ≥ 1"),
        ({"robust_loss": "l2"}, "unknown robust loss"),
        ({"bits": [8, 8]}, "bit widths given"),
        ({"warmup": 0.7, "ramp": 0.5}, "exceeds 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"time_budget": float("nan")}, "finite"),
    ],
)
def test_bad_configurations_raise_clear_errors(tmp_path, kw, match) -> None:
    with pytest.raises(QcertError, match=match):
        train(_cfg(tmp_path, "bad", **kw))


def test_pgd_counterexamples_skip_only_certified_samples(tmp_path) -> None:
    from qcert.attack import robust_accuracy
    from qcert.train.metrics import certified_flags, pgd_counterexamples

    res = train(_cfg(tmp_path, "q", method="qat", eps=3, epochs=3, pgd_steps=0))
    net = res.net
    images, labels = load("digits", "test", n=80)
    x = images.reshape(80, *net.input_shape).to(torch.int64)
    full = robust_accuracy(net, x, labels, 3, steps=5, seed=0)
    hit = pgd_counterexamples(net, x, labels, 3, None, 5, 1, 0)
    assert int(hit.sum()) == len(full["counterexamples"]) > 0
    assert sorted(hit.nonzero().squeeze(1).tolist()) == [
        c["index"] for c in full["counterexamples"]
    ]
    cert = certified_flags(net, x, labels, 3)
    hit2 = pgd_counterexamples(net, x, labels, 3, cert, 5, 1, 0)
    assert not bool((hit2 & cert).any())
