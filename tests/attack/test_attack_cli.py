"""``qcert attack``: JSON summary, counterexample file, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qcert.cli.main import main
from qcert.data import load


def test_attack_json_and_out(
    digits_qnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cex.jsonl"
    argv = [
        "attack",
        str(digits_qnn),
        "--dataset",
        "digits",
        "--eps",
        "24",
        "--n",
        "40",
        "--steps",
        "5",
        "--json",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"n", "clean_acc", "robust_acc", "counterexamples"} <= set(summary)
    assert summary["n"] == 40 and summary["robust_acc"] <= summary["clean_acc"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == summary["counterexamples"] > 0
    from qcert import load_model

    net = load_model(digits_qnn)
    ds = load("digits", "test", n=40)
    for rec in lines:
        pt = torch.tensor(rec["input"]).reshape(1, 1, 8, 8).reshape(1, 64)
        x = ds.images[rec["index"]].reshape(1, 64).to(torch.int64)
        assert int((pt - x).abs().max()) <= 24
        assert int(net.predict(pt)[0]) == rec["predicted"] != rec["label"]


def test_attack_text_output(digits_qnn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["attack", str(digits_qnn), "--dataset", "digits", "--eps", "1", "--n", "5"]
    assert main(argv) == 0
    assert "robust accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("eps", ["-1", "1.5", "nan", "x"])
def test_attack_bad_eps(digits_qnn: Path, eps: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["attack", str(digits_qnn), "--dataset", "digits", "--eps", eps])
    assert e.value.code == 2
    assert "--eps" in capsys.readouterr().err


def test_attack_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attack", str(tmp_path / "nope.qnn"), "--dataset", "digits", "--eps", "1"])
    assert code == 2
    assert "error" in capsys.readouterr().err
