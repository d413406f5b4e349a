"""The `qcert train` command: a thin layer over qcert.train.train."""

from __future__ import annotations

import json

import pytest

from qcert.cli.main import main
from qcert.quant import load_model


def test_train_command_writes_model_and_metrics(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--arch", "mlp-small", "--method", "qa-ibp"]
    argv += ["--eps", "1", "--epochs", "2", "--out", str(out), "--n-test", "60"]
    argv += ["--pgd-steps", "2", "--bits", "8,6,8", "--robust-loss", "hinge", "--threads", "1"]
    argv += ["--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert printed == on_disk
    assert printed["config"]["bits"] == [8, 6, 8] and printed["config"]["robust_loss"] == "hinge"
    net = load_model(out / "model.qnn")
    assert [m.weight_format.bits for m in net.affine_layers()] == [8, 6, 8]
    # resume with more epochs, human-readable output
    assert main([*argv[:-1], "--epochs", "3", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "clean accuracy" in text and "certified (exact QA-IBP) ε=1" in text
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--arch", "vgg"], "unknown architecture 'vgg'"),
        (["--method", "sgd"], "unknown method 'sgd'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--eps", "-1"], "eps must be ≥ 0"),
        (["--epochs", "0"], "epochs must be ≥ 1"),
        (["--robust-loss", "mse"], "unknown robust loss"),
    ],
)
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, extra, message) -> None:
    argv = ["train", "--dataset", "digits", "--out", str(tmp_path / "x"), "--epochs", "1"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("qcert train: error:")
    assert not (tmp_path / "x").exists()


def test_bits_must_be_integers(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "digits", "--out", "x", "--bits", "8,a"])
    assert e.value.code == 2
    assert "comma list" in capsys.readouterr().err
