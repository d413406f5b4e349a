"""``qcert quantize`` end to end on digits with a tiny float model, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from qnets import fit
from torch import nn

from qcert.cli.main import main
from qcert.data import load
from qcert.layerwise.pipeline import search_eps_for
from qcert.quant import load_model
from qcert.quant.accuracy import accuracy
from qcert.quant.floatmodel import FloatModel, save_float


@pytest.fixture(scope="module")
def float_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tr = load("digits", "train")
    torch.manual_seed(1)
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    model = FloatModel(module, (1, 8, 8), 1 / 256, tr.classes, {"eps": 6})
    fit(model.logits, module.parameters(), tr.images.float(), tr.labels, steps=120, lr=1e-2)
    path = tmp_path_factory.mktemp("lw") / "float.safetensors"
    save_float(model, path)
    return path


FAST = ["--calib-n", "96", "--n-eval", "40", "--pgd-steps", "3", "--pgd-loss", "margin"]


@pytest.mark.parametrize("strategy", ["lipschitz", "uniform", "mse"])
def test_quantize_end_to_end(
    strategy: str, float_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q.qnn"
    argv = ["quantize", str(float_file), "--strategy", strategy, "--avg-bits", "4"]
    argv += ["--calib-data", "digits", "--eps", "0,3", "--out", str(out), "--json", *FAST]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {"bits", "avg_bits", "clean_acc", "pgd_acc", "ibp_certified_acc"}
    assert len(res["bits"]) == 2 and res["avg_bits"] <= 4
    assert set(res["pgd_acc"]) == {"0", "3"} == set(res["ibp_certified_acc"])
    assert res["search_eps"] == 6  # the float model's training eps
    net = load_model(out)
    te = load("digits", "test", n=40)
    # every accuracy is the reference executor's on the saved network
    assert res["clean_acc"] == accuracy(net, te.images, te.labels) > 0.6
    assert res["pgd_acc"]["0"] == res["clean_acc"] == res["ibp_certified_acc"]["0"]
    for e in ("0", "3"):
        assert res["ibp_certified_acc"][e] <= res["pgd_acc"][e] <= res["clean_acc"]
    assert [m.weight_format.bits for m in net.affine_layers()] == res["bits"]


def test_quantize_text_output(float_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["quantize", str(float_file), "--strategy", "mse", "--avg-bits", "3.5"]
    assert main([*argv, "--calib-data", "digits", "--eps", "2", *FAST]) == 0
    text = capsys.readouterr().out
    assert "mse: bits" in text and "ε=2: PGD accuracy" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "uniform", "--avg-bits", "3.5"], "whole number of bits"),
        (["--strategy", "mse", "--avg-bits", "9"], "avg_bits must lie in"),
        (["--strategy", "mse", "--avg-bits", "4", "--calib-data", "mnist-idx"], "root"),
    ],
)
def test_bad_values_give_one_line_errors(
    extra: list[str], message: str, float_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["quantize", str(float_file), *FAST]
    if "--calib-data" not in extra:
        argv += ["--calib-data", "digits"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("qcert quantize: error:")


def test_missing_and_malformed_model_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--strategy", "mse", "--avg-bits", "4", "--calib-data", "digits"]
    assert main(["quantize", str(tmp_path / "none.safetensors"), *args]) == 2
    assert "no such float model file" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    assert main(["quantize", str(bad), *args]) == 2
    assert "truncated" in capsys.readouterr().err


def test_shape_mismatch_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = FloatModel(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (1, 28, 28))
    path = tmp_path / "mnist.safetensors"
    save_float(model, path)
    argv = ["quantize", str(path), "--strategy", "mse", "--avg-bits", "4", "--calib-data", "digits"]
    assert main(argv) == 2
    assert "the float model expects" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        ["--strategy", "random", "--avg-bits", "4"],
        ["--strategy", "mse", "--avg-bits", "four"],
        ["--strategy", "mse", "--avg-bits", "nan"],
        ["--strategy", "mse", "--avg-bits", "4", "--eps", "25,x"],
        ["--strategy", "mse", "--avg-bits", "4", "--eps", "-1"],
        ["--strategy", "mse", "--avg-bits", "4", "--n-eval", "0"],
        ["--avg-bits", "4"],
    ],
)
def test_bad_arguments_are_usage_errors(extra: list[str], float_file: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(float_file), "--calib-data", "digits", *extra])
    assert e.value.code == 2


def test_search_eps_defaults() -> None:
    model = FloatModel(nn.Sequential(nn.Linear(2, 2)), (2,), meta={"eps": 5})
    assert search_eps_for(model, [25, 76], None) == 5
    assert search_eps_for(model, [25, 76], 9) == 9
    model.meta = {}
    assert search_eps_for(model, [25, 76], None) == 25
    assert search_eps_for(model, [], None) is None
