"""`qcert train --method noise` (integer-noise QAT for smoothing) and `--method pgd` (float PGD)."""

from __future__ import annotations

import json

import pytest
import torch

from qcert.cli.main import main
from qcert.errors import ConfigError
from qcert.quant import load_model
from qcert.train import TrainConfig, train
from qcert.train.qaibp import NoiseMethod


def test_noise_method_trains_on_integer_noisy_inputs(tmp_path) -> None:
    cfg = TrainConfig(dataset="digits", out=str(tmp_path), method="noise", sigma=0.25, epochs=2)
    res = train(cfg, progress=False)
    assert res.metrics["method"] == "noise" and res.net.meta["sigma"] == 0.25
    assert load_model(res.model_path).num_classes == 10
    method = NoiseMethod(cfg, (1, 8, 8), 10, [str(i) for i in range(10)])
    seen = []
    orig = method.net.forward
    method.net.forward = lambda x: (seen.append(x.clone()), orig(x))[1]
    x = torch.full((4, 1, 8, 8), 128.0)
    from qcert.train.base import ScheduleValues

    method.loss(x, torch.zeros(4, dtype=torch.int64), ScheduleValues(0.0, 0.0, 0.0, True))
    noisy = seen[0]
    assert torch.equal(noisy, noisy.round()) and float((noisy - x).std()) > 30
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 255
    with pytest.raises(ConfigError):
        TrainConfig(dataset="digits", out=str(tmp_path), method="noise", sigma=-1.0).validate()


def test_pgd_method_writes_a_float_model(tmp_path, capsys) -> None:
    out = tmp_path / "pgd"
    argv = ["train", "--dataset", "digits", "--method", "pgd", "--arch", "mlp-small", "--eps", "8"]
    assert main([*argv, "--epochs", "1", "--out", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["pgd_acc"] <= metrics["clean_acc"] <= 1
    assert (out / "float.safetensors").exists()
    assert main([*argv, "--epochs", "1", "--out", str(out), "--arch", "paper-mnist"]) == 2
