"""``qcert export`` and ``qcert import``."""

from __future__ import annotations

import json

import pytest
import torch

from qcert.cli.main import main
from qcert.export import from_onnx
from qcert.quant import (
    FixedPointFormat,
    QConv2d,
    QFlatten,
    QLinear,
    QNetwork,
    QRequant,
    load_model,
    save_model,
)


def small_net(rounding: str = "half_even") -> QNetwork:
    g = torch.Generator().manual_seed(0)
    i7 = FixedPointFormat(7, True, 6)
    return QNetwork(
        [
            QConv2d.from_int(
                torch.randint(-64, 64, (2, 1, 3, 3), generator=g).double(), None, i7, None
            ),
            QRequant(FixedPointFormat(8, False, 6), rounding),
            QFlatten(),
            QLinear.from_int(
                torch.randint(-64, 64, (10, 72), generator=g).double(), None, i7, None
            ),
        ],
        (1, 8, 8),
        FixedPointFormat(8, False, 8),
    )


@pytest.fixture
def qnn(tmp_path):
    path = tmp_path / "m.qnn"
    save_model(small_net(), path)
    return path


def test_export_integer_and_check(qnn, tmp_path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", str(qnn), "--onnx", str(out), "--check", "40"]) == 0
    text = capsys.readouterr().out
    assert out.exists()
    assert "40 equal logit rows" in text and "integer" in text


def test_export_json_with_dataset(qnn, tmp_path, capsys) -> None:
    out = tmp_path / "m.onnx"
    args = ["export", str(qnn), "--onnx", str(out), "--flavour", "qdq", "--json"]
    assert main(args + ["--dataset", "digits", "--n", "100", "--check", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [c["n"] for c in result["checks"]] == [8, 100]
    assert all(c["equal_logits"] == c["n"] for c in result["checks"])
    assert "QuantizeLinear" in result["operators"]


def test_export_qdq_refuses_half_up_and_allow_inexact_reports_the_difference(tmp_path, capsys):
    qnn = tmp_path / "hu.qnn"
    save_model(small_net("half_up"), qnn)
    out = tmp_path / "m.onnx"
    assert main(["export", str(qnn), "--onnx", str(out), "--flavour", "qdq"]) == 2
    assert "half_up" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["export", str(qnn), "--onnx", str(out), "--flavour", "qdq", "--allow-inexact"])
    err = capsys.readouterr().err
    assert out.exists() and "warning" in err and "half_up" in err
    assert rc == 1 and "differ" in err  # 256 random inputs hit ties that round differently


def test_import_round_trip(qnn, tmp_path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", str(qnn), "--onnx", str(out), "--check", "0"]) == 0
    back = tmp_path / "back.qnn"
    assert main(["import", str(out), "--out", str(back), "--check", "16"]) == 0
    assert "16 equal logit rows" in capsys.readouterr().out
    a, b = load_model(qnn), load_model(back)
    x = torch.randint(0, 256, (32, 1, 8, 8))
    assert torch.equal(a.integer_forward(x), b.integer_forward(x))
    assert torch.equal(from_onnx(out).integer_forward(x), a.integer_forward(x))


def test_import_errors(tmp_path, capsys) -> None:
    rc = main(["import", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "x.qnn")])
    assert rc == 2 and "no such" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    assert main(["import", str(bad), "--out", str(tmp_path / "x.qnn")]) == 2
    assert "qcert import: error" in capsys.readouterr().err
